import pytest

from omnilm.config import load_recipe, parse_overrides
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
