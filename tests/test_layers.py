"""The package layers hold: no omnilm module imports one of a higher layer, at the top of the file
or inside a function. The order is the table in docs/architecture.md, so the doc and this test
cannot disagree."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "omnilm"
DOC = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\w+)\s*\|(.*)\|\s*$")


def layer_table() -> dict[str, tuple[int, str]]:
    """'core/' or 'errors.py' -> (rank, layer name), from the rows under the doc's '## Layers'."""
    text = DOC.read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in text.splitlines():
        if match := ROW.match(line):
            rank, name, cells = int(match.group(1)), match.group(2), match.group(3)
            for entry in re.findall(r"`([^`]+)`", cells):
                table[entry] = (rank, name)
    assert table, f"no layer table under '## Layers' in {DOC}"
    return table


def layer_of(module_path: str, table: dict) -> tuple[int, str] | None:
    """'omnilm/data/chat.py' -> the layer of 'data/' (or of 'chat.py' for a top-level module)."""
    inside = module_path.removeprefix("omnilm/")
    top = inside.split("/", 1)[0] + "/" if "/" in inside else inside
    return table.get(top)


def module_file(name: str) -> str | None:
    """'omnilm.data.chat' -> 'omnilm/data/chat.py' (a package -> its folder), None outside omnilm."""
    if name != "omnilm" and not name.startswith("omnilm."):
        return None
    path = ROOT / Path(*name.split("."))
    if path.is_dir():
        return str(path.relative_to(ROOT)) + "/__init__.py"
    return str(path.relative_to(ROOT)) + ".py" if path.with_suffix(".py").is_file() else None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every omnilm module `path` imports, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from omnilm.x import y` may import the module omnilm.x.y
            found += [(node.lineno, f"{node.module}.{a.name}") if module_file(f"{node.module}.{a.name}")
                      else (node.lineno, node.module) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if module_file(name)]


def test_every_module_has_a_layer():
    table = layer_table()
    missing = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                     if layer_of(str(p.relative_to(ROOT)), table) is None)
    assert not missing, f"modules in no layer of docs/architecture.md's table: {missing}"


def test_no_module_imports_a_higher_layer():
    table = layer_table()
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = str(path.relative_to(ROOT))
        rank, name = layer_of(source, table)
        for line, module in imports(path):
            target_rank, target_name = layer_of(module_file(module), table)
            if target_rank > rank:
                violations.append(f"{source}:{line}: {name} imports {module} ({target_name})")
    assert not violations, "imports against the layer order in docs/architecture.md:\n" + "\n".join(violations)


def test_the_check_sees_function_local_imports(tmp_path):
    """The walk must find an import inside a function, or a lazy import would slip through."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from omnilm.model.build import build_model\n")
    assert imports(module) == [(2, "omnilm.model.build")]
