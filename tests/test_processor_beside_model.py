"""The model and its processor side by side: built, saved and loaded together, neither holding the
other; each prompt encoded once; no import circles in omnilm/model."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from omnilm.config import load_recipe
from omnilm.data.fixtures import draw_shape
from omnilm.core.sample import Message, Sample
from omnilm.generation import generate
from omnilm.generation_settings import GenerationSettings
from omnilm.model.build import build_model
from omnilm.model.processing import OmniProcessor
from omnilm.model.saved import load_pretrained, write_model_folder
from omnilm.model.omni import OmniLM
from omnilm.serve.engine import Engine

MODEL_PACKAGE = Path(__file__).resolve().parents[1] / "omnilm" / "model"


def imported_modules(path: Path) -> set[str]:
    """Every omnilm.model module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {".".join(n.split(".")[:3]) for n in names if n.startswith("omnilm.model.")}
    return {m for m in found if (MODEL_PACKAGE / f"{m.split('.')[2]}.py").is_file()}


def test_no_import_circles_in_the_model_package():
    graph = {f"omnilm.model.{p.stem}": imported_modules(p) for p in MODEL_PACKAGE.glob("*.py")}

    def reaches(start: str, target: str, seen: set) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, f"modules on an import circle: {circles}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_model(load_recipe("configs/tiny-stage1.yaml"), base_dir=tmp_path_factory.mktemp("base"))


def ask(text: str, *images) -> Sample:
    return Sample([Message("user", "<image>\n" * len(images) + text)], images=list(images))


def test_built_side_by_side_and_neither_holds_the_other(built):
    model, processor = built
    assert isinstance(model, OmniLM) and isinstance(processor, OmniProcessor)
    assert not hasattr(model, "processor")
    assert all(value is not model for value in vars(processor).values())


def test_export_saves_both_and_load_returns_both(built, tmp_path):
    model, processor = built
    prompt = ask("What colour?", draw_shape("red", "circle"))
    write_model_folder(model, processor, tmp_path / "export")
    loaded_model, loaded_processor = load_pretrained(tmp_path / "export")
    assert isinstance(loaded_model, OmniLM) and not hasattr(loaded_model, "processor")
    ids = processor.encode_prompt(prompt).input_ids.tolist()
    assert loaded_processor.encode_prompt(prompt).input_ids.tolist() == ids
    config = GenerationSettings(max_new_tokens=6)
    again = generate(loaded_model, loaded_processor, [prompt], config)[0]
    assert again.token_ids == generate(model, processor, [prompt], config)[0].token_ids


@pytest.fixture
def preprocessed(built, monkeypatch):
    """How many images the processor has read and preprocessed (a counter around its own preprocess)."""
    processor = built[1]
    calls = []
    original = processor.preprocess

    def counting(modality, item):
        calls.append(item)
        return original(modality, item)

    monkeypatch.setattr(processor, "preprocess", counting)
    return calls


def test_generate_takes_an_encoded_batch_without_encoding_again(built, preprocessed):
    model, processor = built
    prompts = [ask("What is this?", draw_shape("red", "circle")), ask("Hi")]
    config = GenerationSettings(max_new_tokens=8)
    encoded = [processor.encode_prompt(p) for p in prompts]
    assert len(preprocessed) == 1
    from_encoded = generate(model, processor, encoded, config)
    assert len(preprocessed) == 1  # media were preprocessed once, when encoded
    assert [c.token_ids for c in from_encoded] == [c.token_ids for c in generate(model, processor, prompts, config)]


def test_the_server_encodes_each_request_once(built, preprocessed):
    """The engine encodes a request to check its length; that encoding is what it generates from."""
    model, processor = built
    engine = Engine(model, processor).start()
    try:
        done = engine.submit(ask("What is this?", draw_shape("blue", "square")), GenerationSettings(max_new_tokens=4))
        completion = done.result(timeout=60)
        handle = engine.stream(ask("And this?", draw_shape("red", "circle")), GenerationSettings(max_new_tokens=4))
        handle.start_sync()
        list(handle)
    finally:
        engine.close()
    assert completion.prompt_tokens > 16 and handle.end is not None
    assert len(preprocessed) == 2  # one image a request, each read and preprocessed once
