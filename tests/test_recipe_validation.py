"""Bad recipes stop before any weight is read, with one line naming the key, the value and why.

Each case is one of the bad recipes from issue #11: before the checks, some ended in a traceback
and the others trained silently (lr .inf even saved NaN weights and exited 0).
"""
import re

import pytest
import torch
import yaml
from accelerate import init_empty_weights

from omnilm.cli import main
from omnilm.config import EncoderConfig, load_recipe
from omnilm.errors import OmniError
from omnilm.model.build import materialize_random
from omnilm.model.checks import check_against_model
from omnilm.core.components import ENCODERS
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe

STAGE1, STAGE2 = CONFIGS / "tiny-stage1.yaml", CONFIGS / "tiny-stage2.yaml"
SHORT = ["--train.max_steps=2", "--train.batch_size=4", "--train.save_every=1"]  # quick, should a bad one train

CASES = [  # (id, recipe, overrides, what the error must say)
    # ended in a traceback
    ("log_every_0", STAGE1, ["--train.log_every=0"], r"train\.log_every = 0: must be an integer >= 1"),
    ("save_every_0", STAGE1, ["--train.save_every=0"], r"train\.save_every = 0: must be an integer >= 1"),
    ("lr_nan", STAGE1, ["--train.lr=.nan"], r"train\.lr = nan: must be a finite number in \(0, 10\]"),
    ("lr_1e300", STAGE1, ["--train.lr=1e300"], r"train\.lr = 1e\+300: must be a finite number in \(0, 10\]"),
    ("weight_decay_negative", STAGE1, ["--train.weight_decay=-0.1"], r"train\.weight_decay = -0\.1: .* >= 0"),
    ("num_workers_negative", STAGE1, ["--data.num_workers=-1"], r"data\.num_workers = -1: must be an integer >= 0"),
    ("end_token_outside_vocab", STAGE1, ["--model.image.end_token_id=9999"],
     r"model\.image\.end_token_id = 9999: must be a token id of the LLM, in \[0, 259\)"),
    ("random_config_negative_size", STAGE1, ["--model.llm.random_config.hidden_size=-4"],
     r"model\.llm\.random_config: cannot build a 'phi' model from it: .*negative dimension -4"),
    ("random_config_wrong_type", STAGE1, ["--model.llm.random_config.hidden_size=wide"],
     r"model\.llm\.random_config: .*'hidden_size' expected int, got str"),
    ("random_config_unknown_model_type", STAGE1, ["--model.llm.random_config.model_type=phy"],
     r"model\.llm\.random_config\.model_type 'phy': not a transformers model type; close: .*phi"),
    ("random_config_vocab_below_special_tokens", STAGE1, ["--model.llm.random_config.vocab_size=200"],
     r"model\.llm\.tokenizer: its special token '<\|endoftext\|>' has id 256, outside the LLM's vocabulary of 200"),
    ("image_random_config_negative_size", STAGE1, ["--model.image.random_config.patch_size=-8"],
     r"model\.image\.random_config: cannot build a clip encoder from it: .*negative dimension"),
    ("lora_r_0", STAGE2, ["--model.llm.lora.r=0"], r"model\.llm\.lora\.r = 0: must be an integer >= 1"),
    ("lora_r_wider_than_layers", STAGE2, ["--model.llm.lora.r=1000"],
     r"model\.llm\.lora\.r = 1000: must be at most 64, the width of the 'q_proj' layers"),
    ("lora_target_missing", STAGE2, ["--model.llm.lora.target_modules=[q_proj, qkv]"],
     r"model\.llm\.lora\.target_modules: 'qkv' is not a layer of this LLM .*linear layers are: dense, fc1, fc2, "
     r"k_proj, lm_head, q_proj, v_proj"),
    ("lora_target_not_a_layer", STAGE2, ["--model.llm.lora.target_modules=[mlp]"],
     r"model\.llm\.lora\.target_modules: 'mlp' is not a layer of this LLM"),
    ("lora_dropout_1", STAGE2, ["--model.llm.lora.dropout=1"], r"model\.llm\.lora\.dropout = 1\.0: .*in \[0, 1\)"),
    # trained silently
    ("lr_inf", STAGE1, ["--train.lr=.inf"], r"train\.lr = inf: must be a finite number"),
    ("epochs_0", STAGE1, ["--train.epochs=0"], r"train\.epochs = 0: must be an integer >= 1"),
    ("warmup_negative", STAGE1, ["--train.warmup_steps=-5"], r"train\.warmup_steps = -5: must be an integer >= 0"),
    ("max_grad_norm_nan", STAGE1, ["--train.max_grad_norm=.nan"], r"train\.max_grad_norm = nan: .* >= 0"),
    ("keep_checkpoints_0", STAGE1, ["--train.keep_checkpoints=0"], r"train\.keep_checkpoints = 0: .* >= 1"),
    ("random_config_unknown_key", STAGE1, ["--model.llm.random_config.hiden_size=128"],
     r"unknown key model\.llm\.random_config\.hiden_size for PhiConfig; did you mean 'hidden_size'\?"),
    ("image_random_config_unknown_key", STAGE1, ["--model.image.random_config.num_layers=4"],
     r"unknown key model\.image\.random_config\.num_layers for CLIPVisionConfig"),
    ("lr_scale_negative", STAGE1, ["--train.lr_scale.image_projector=-1"],
     r"train\.lr_scale\.image_projector = -1: must be a finite number in \[0, 100\]"),
    ("section_as_list", "train-as-list", [], r"train: expected a mapping, got list"),
    # encoder facts now come from one registry (omnilm.core.components); a siglip without weights passed
    ("siglip_without_weights", STAGE1, ["--model.image.type=siglip", "--model.image.random_config="],
     r"model\.image\.name_or_path: a siglip encoder needs weights: set name_or_path"),
    ("audio_encoder_as_image", STAGE1, ["--model.image.type=whisper"],
     r"model\.image\.type 'whisper' is an audio encoder; it cannot be model\.image"),
    ("unknown_encoder_type", STAGE1, ["--model.image.type=vit"],
     r"model\.image\.type 'vit': not an encoder type; choose one of clip \(image\), siglip \(image\)"),
    ("pool_grid_on_clip", STAGE1, ["--model.image.pool_grid=2"],
     r"model\.image\.pool_grid: for efficientnet_lite0 encoders only, not clip"),
    # issue 20: accepted as all defaults (microsoft/phi-2), or reported as an image path / the hub
    ("empty_recipe", "empty", [], r"empty\.yaml: the recipe is empty; it needs at least one of the sections "
     r"model, data, train"),
    ("only_empty_sections", "sections-empty", [], r"sections-empty\.yaml: the recipe is empty"),
    # a wrong path was reported as a malformed hub id
    ("model_path_missing", STAGE2, ["--model.llm.name_or_path={tmp}/no-such-run/base/llm"],
     r"model\.llm\.name_or_path '.*no-such-run/base/llm': no such local file or folder, and not a Hugging Face "
     r"hub id"),
]


MEDIA_FOLDER_CASES = [  # (id, recipe, overrides, the one line): issue 20, they named an image path, not the setting
    ("image_dir_missing", STAGE1, ["--data.image_dir="],
     r"image 000000000000\.jpg is not in .*/coco/annotations, the folder of data\.path \(data\.image_dir is not "
     r"set\); set data\.image_dir to the folder that holds the images"),
    ("image_dir_wrong", STAGE1, ["--data.image_dir={tmp}"],
     r"image 000000000000\.jpg is not in data\.image_dir \(.*\); set data\.image_dir to the folder that holds the "
     r"images"),
    ("image_dir_not_a_folder", STAGE1, ["--data.image_dir={tmp}/no-such-folder"],
     r"data\.image_dir: no such folder: .*/no-such-folder"),
    ("llava_image_dir_missing", STAGE2, ["--data.image_dir="],
     r"image 000000000000\.jpg is not in .*/llava, the folder of data\.path \(data\.image_dir is not set\); set "
     r"data\.image_dir to the folder that holds the images"),
]


@pytest.fixture(scope="module")
def stage1_base(tmp_path_factory):
    """The tiny stage-1 base models (random, written once), which tiny-stage2 builds on."""
    return materialize_random(load_recipe(STAGE1), tmp_path_factory.mktemp("base")).model


def recipe_args(name, tiny_data, stage1_base, tmp_path) -> list[str]:
    if name == STAGE2:
        return [str(STAGE2), f"--data.path={tiny_data['llava']}", f"--data.image_dir={tiny_data['llava_images']}",
                f"--model.llm.name_or_path={stage1_base.llm.name_or_path}",
                f"--model.image.name_or_path={stage1_base.image.name_or_path}", "--model.init_from="]
    recipe = STAGE1
    if name in ("empty", "sections-empty"):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text("# nothing set yet\n" if name == "empty" else "model:\ndata: {}\n")
        return [str(recipe)]
    if name == "train-as-list":  # "train:" written as a YAML list: a dotted override used to discard it
        data = yaml.safe_load(STAGE1.read_text())
        data["train"] = [{key: value} for key, value in data["train"].items()]
        recipe = tmp_path / "train-as-list.yaml"
        recipe.write_text(yaml.safe_dump(data))
    return [str(recipe), f"--data.path={tiny_data['coco']}", f"--data.image_dir={tiny_data['coco_images']}"]


@pytest.mark.parametrize("recipe, overrides, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_is_one_line_naming_the_key_before_any_weights(recipe, overrides, message, tiny_data,
                                                                  stage1_base, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*recipe_args(recipe, tiny_data, stage1_base, tmp_path), *SHORT, f"--train.output_dir={run}"]
    assert main(["train", *args, *(o.format(tmp=tmp_path) for o in overrides)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("omnilm: error: ")
    assert re.search(message, last), last
    assert not run.exists()  # stopped before the run folder, base models or any weights were written


@pytest.mark.parametrize("recipe, overrides, message", [c[1:] for c in MEDIA_FOLDER_CASES],
                         ids=[c[0] for c in MEDIA_FOLDER_CASES])
def test_a_wrong_media_folder_is_one_line_naming_the_setting(recipe, overrides, message, tiny_data, stage1_base,
                                                             tmp_path, capsys):
    args = [*recipe_args(recipe, tiny_data, stage1_base, tmp_path), *(o.format(tmp=tmp_path) for o in overrides)]
    assert main(["data", "check", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.fullmatch(f"omnilm: error: {message}", err), err


NOT_ON_DISK_CASES = [  # issue 20: a name that is no folder, without random_config, got the hub's connection error
    ("model.llm", ["--model.llm.random_config="], "tiny-phi"),
    ("model.image", ["--model.image.random_config=", "--model.image.name_or_path=my-clip"], "my-clip"),
]


@pytest.mark.parametrize("section, overrides, name", NOT_ON_DISK_CASES, ids=[c[0] for c in NOT_ON_DISK_CASES])
def test_a_name_neither_on_disk_nor_on_the_hub_names_the_key_and_random_config(section, overrides, name, tiny_data,
                                                                              stage1_base, tmp_path, capsys,
                                                                              monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on an offline cluster: no wait for the network
    run = tmp_path / "run"
    args = [*recipe_args(STAGE1, tiny_data, stage1_base, tmp_path), *SHORT, f"--train.output_dir={run}"]
    assert main(["train", *args, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"omnilm: error: {re.escape(section)}\.name_or_path '{name}': no such local file or folder, "
                        r"and the Hugging Face hub cannot give it \([^()]+\); point it at a folder of weights, or set "
                        rf"{re.escape(section)}\.random_config for random weights", err.splitlines()[-1]), err
    assert not run.exists()


def test_checks_accept_the_shipped_tiny_recipes_and_leave_the_rng_alone(tiny_data, stage1_base, tmp_path):
    stage2 = load_recipe(STAGE2, {"model": {"llm": {"name_or_path": stage1_base.llm.name_or_path},
                                            "image": {"name_or_path": stage1_base.image.name_or_path},
                                            "init_from": None}})
    for recipe in (tiny_recipe(tiny_data, tmp_path), stage2):
        torch.manual_seed(0)
        check_against_model(recipe)
        after = torch.rand(3)
        torch.manual_seed(0)
        torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)  # the seeded run draws what it did


TINY_ENCODERS = {  # a random config for each registered encoder type
    "clip": {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "siglip": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "efficientnet_lite0": {},
    "whisper": {"num_mel_bins": 80, "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
                "encoder_ffn_dim": 32},
}


def test_each_registry_entry_builds_an_encoder_of_its_modality():
    assert set(TINY_ENCODERS) == set(ENCODERS)
    for name, spec in ENCODERS.items():
        with init_empty_weights():
            encoder = spec.build(EncoderConfig(type=name, random_config=TINY_ENCODERS[name]), 0)
        assert encoder.modality == spec.modality, name


def test_an_override_may_fill_a_section_the_recipe_left_empty(tmp_path):
    data = yaml.safe_load(STAGE1.read_text())
    data["model"]["llm"]["lora"] = None
    recipe = tmp_path / "lora-null.yaml"
    recipe.write_text(yaml.safe_dump(data))
    loaded = load_recipe(recipe, ["model.llm.lora.r=8"])
    assert loaded.model.llm.lora.r == 8 and loaded.model.llm.lora.target_modules


def test_a_loss_that_becomes_nan_stops_training_without_saving_it(tiny_data, tmp_path):
    def poison(state, model):  # what an exploding step does to the weights
        if state.step == 1:
            with torch.no_grad():
                for param in model.projectors.parameters():
                    param.fill_(float("nan"))

    recipe = tiny_recipe(tiny_data, tmp_path, train={"max_steps": 3, "batch_size": 4, "save_every": 100})
    with pytest.raises(OmniError, match=r"training diverged: the loss is nan at step 2; stopped without saving"):
        train(recipe, progress=False, callbacks=[poison])
    assert not (tmp_path / "run" / "weights.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
