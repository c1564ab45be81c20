import re

import pytest

from omnilm.config import CHOICES, load_recipe, parse_overrides, validate
from omnilm.errors import ConfigError
from tests.conftest import CONFIGS


def test_seed_recipe_loads_and_matches_the_seed():
    recipe = load_recipe(CONFIGS / "phi2-tinyclip-stage1.yaml")
    assert recipe.model.llm.name_or_path == "microsoft/phi-2"
    assert recipe.model.image.name_or_path == "wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M"
    assert recipe.model.image.drop_cls and recipe.model.image.end_token_id == 23893
    assert recipe.model.image.projector.type == "resblock"
    assert recipe.train.stage == "align" and recipe.data.source == "coco"


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("train:\n  lr: 0.1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate.*valid keys under train: stage, output_dir"):
        load_recipe(bad)


def test_wrong_type_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got str"):
        load_recipe(CONFIGS / "tiny-stage1.yaml", ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"model\.llm\.quantization: 'nf3' is not one of"):
        load_recipe(CONFIGS / "tiny-stage1.yaml", ["model.llm.quantization=nf3"])


def test_dotted_overrides_parse_yaml_scalars():
    assert parse_overrides(["--train.lr=1e-4", "data.limit=10", "data.skip_bad=true"]) == {
        "train": {"lr": "1e-4"}, "data": {"limit": 10, "skip_bad": True}}
    recipe = load_recipe(CONFIGS / "tiny-stage1.yaml", ["--train.lr=1e-4"])
    assert recipe.train.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.lr"])


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_seed_stage2_recipe_is_qlora_r64_on_phi2():
    recipe = load_recipe(CONFIGS / "phi2-tinyclip-stage2-qlora.yaml")
    assert recipe.model.llm.quantization == "nf4" and recipe.model.llm.lora.r == 64
    assert recipe.model.llm.lora.target_modules == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    assert recipe.train.stage == "instruct" and recipe.data.source == "llava"


@pytest.mark.parametrize("key, typo", [("train.stage", "allign"), ("data.source", "cocoo"), ("data.template", "phii"),
                                       ("model.llm.dtype", "fp32"), ("train.mixed_precision", "bf32"),
                                       ("model.audio_route", "nativ")])
def test_a_typo_in_a_name_is_one_line_naming_key_value_and_choices(key, typo):
    allowed = ", ".join(CHOICES[key])
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: {typo!r} is not one of {re.escape(allowed)}$"):
        load_recipe(overrides=[f"{key}={typo}"])


def test_typos_inside_optional_sections_are_caught_at_load():
    image = ["model.image.type=clip", "model.image.random_config={hidden_size: 8}"]
    with pytest.raises(ConfigError, match=r"^model\.image\.projector\.type: 'reslock' is not one of resblock, "):
        load_recipe(overrides=[*image, "model.image.projector.type=reslock"])
    with pytest.raises(ConfigError, match=r"^model\.transcriber\.backend: 'ct2' is not one of transformers, ctranslate2$"):
        load_recipe(overrides=["model.transcriber.backend=ct2"])
    with pytest.raises(ConfigError, match=r"^model\.image\.type 'clipp': not an encoder type; choose one of clip \(image\), "):
        load_recipe(overrides=["model.image.type=clipp"])


def test_a_name_set_in_code_is_checked_by_validate_too():
    recipe = load_recipe()
    recipe.train.stage = "joint"
    with pytest.raises(ConfigError, match=r"^train\.stage: 'joint' is not one of align, "):
        validate(recipe)


def test_each_registry_holds_exactly_the_names_the_config_allows():
    from omnilm.audio.transcribe import BACKENDS
    from omnilm.data.chat import TEMPLATES
    from omnilm.data.sources import SOURCES
    from omnilm.model.projector import PROJECTORS
    from omnilm.training.stages import STAGES

    registries = {"data.source": SOURCES, "data.template": TEMPLATES, "train.stage": STAGES,
                  "model.image.projector.type": PROJECTORS, "model.audio.projector.type": PROJECTORS,
                  "model.transcriber.backend": BACKENDS}
    for key, registry in registries.items():
        assert sorted(registry) == sorted(CHOICES[key]), key
