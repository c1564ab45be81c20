"""pyproject.toml tells the truth: the Python it names runs omnilm, every package omnilm imports
is declared, the pins setup.sh installs satisfy it, and a missing optional package is one line."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from omnilm.config import DataConfig
from omnilm.errors import MissingDependency
from omnilm.extras import EXTRA_OF

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(lines) -> list[Requirement]:
    return [Requirement(line) for line in lines]


def _pins(path: Path) -> dict[str, Version]:
    rows = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(r.name): Version(str(r.specifier).removeprefix("==")) for r in _requirements(filter(None, rows))}


def _declared() -> dict[str, str]:
    """distribution -> "core" or the extra that declares it."""
    declared = {canonicalize_name(r.name): "core" for r in _requirements(PROJECT["dependencies"])}
    for extra, lines in PROJECT["optional-dependencies"].items():
        declared.update({canonicalize_name(r.name): extra for r in _requirements(lines)})
    return declared


def _imported_top_level_modules() -> set[str]:
    """Every absolute import in omnilm/, at any depth of any function, by its top-level name."""
    names = set()
    for path in (ROOT / "omnilm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"omnilm"}


def _distribution(module: str) -> str:
    found = importlib.metadata.packages_distributions().get(module)
    assert found, f"omnilm imports {module}, which no installed distribution provides"
    return canonicalize_name(found[0])


def test_requires_python_is_the_documented_one_and_runs_here():
    minimum = re.fullmatch(r">=(\d+\.\d+)", PROJECT["requires-python"]).group(1)
    assert f"Python {minimum} or newer" in (ROOT / "README.md").read_text()
    assert sys.version_info[:2] >= tuple(map(int, minimum.split(".")))


def test_every_package_omnilm_imports_is_declared():
    declared = _declared()
    undeclared = sorted(m for m in _imported_top_level_modules() if _distribution(m) not in declared)
    assert not undeclared, f"imported by omnilm/ but not in pyproject.toml: {undeclared}"


def test_each_hint_names_the_extra_that_installs_the_package():
    declared = _declared()
    assert {m: declared.get(_distribution(m)) for m in EXTRA_OF} == EXTRA_OF
    optional = {m for m in _imported_top_level_modules() if declared[_distribution(m)] != "core"}
    assert optional <= set(EXTRA_OF), f"optional imports without a hint: {sorted(optional - set(EXTRA_OF))}"


def test_the_pins_setup_installs_satisfy_pyproject():
    pins = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-offline.txt") | \
        _pins(ROOT / "requirements-lmms.txt")
    for lines in [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]:
        for req in _requirements(lines):
            name = canonicalize_name(req.name)
            assert name in pins, f"{name} is declared in pyproject.toml but setup.sh does not install it"
            assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"


def test_missing_datasets_is_one_line_naming_the_extra(monkeypatch):
    from omnilm.data.hf_source import open_rows

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ModuleNotFoundError
    with pytest.raises(MissingDependency, match=r"^data.source: hf needs the datasets package: "
                                                r"pip install 'omnilm\[hf\]'$"):
        open_rows(DataConfig(source="hf", path="some/set"))


def test_cli_without_the_serve_packages_prints_the_install_line(tmp_path):
    blocked = "import sys; sys.modules['fastapi'] = None; from omnilm.cli import main; sys.exit(main())"
    run = subprocess.run([sys.executable, "-c", blocked, "serve", "--model", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "omnilm: error: omnilm serve needs the fastapi package: pip install 'omnilm[serve]'"]
