"""`omnilm export --format llava` and `model.init_from: LLAVA`: transformers' LLaVA format both ways.

Every comparison runs the same image and question through omnilm and through transformers'
LlavaForConditionalGeneration + AutoProcessor (the folder alone, as vLLM would read it)."""
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (AutoProcessor, CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, pipeline)

from omnilm.cli import main
from omnilm.config import load_recipe, save_recipe
from omnilm.data.fixtures import draw_shape
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.model.build import build_model, materialize_random, portable
from omnilm.model.saved import RECIPE_FILE, load_pretrained
from omnilm.model.checkpoint import save_trained_weights
from omnilm.model.export import export
from omnilm.model.llava_format import NotExpressible
from omnilm.model.tokenizer import byte_tokenizer
from omnilm.training.loop import train
from tests.conftest import CONFIGS

QUESTION = "What colour is the shape?"
TINY_CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TINY_SIGLIP = {**TINY_CLIP, "model_type": "siglip_vision_model"}
TINY_LLMS = {
    "llama": {"model_type": "llama", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "eos_token_id": 256, "pad_token_id": 257, "initializer_range": 0.2},
    # 300 rows for 259 tokens: <image> takes a spare row, no resizing; tied embeddings
    "qwen2": {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
              "max_position_embeddings": 256, "eos_token_id": 256, "pad_token_id": 257, "initializer_range": 0.2},
}
# What vLLM's LLaVA loader reads from config.json (vllm/model_executor/models/llava.py and clip/siglip.py).
VLLM_CONFIG_FIELDS = ["architectures", "model_type", "image_token_index", "vision_feature_layer",
                      "vision_feature_select_strategy", "projector_hidden_act", "multimodal_projector_bias",
                      "text_config", "vision_config"]
VLLM_VISION_FIELDS = ["model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                      "image_size", "patch_size", "layer_norm_eps", "hidden_act"]
VLLM_TEXT_FIELDS = ["architectures", "model_type", "hidden_size", "vocab_size"]
WEIGHT_PREFIXES = ("vision_tower.vision_model.", "multi_modal_projector.linear_1.", "multi_modal_projector.linear_2.",
                   "language_model.model.", "language_model.lm_head.")


def tiny_run(folder, *, image=None, llm=None, template="phi", projector="mlp2x_gelu", data=None, tokenizer=None):
    """A loadable run folder with random tiny parts (the tiny recipe, changed where asked)."""
    overrides = {"data": {"max_length": 256, "template": template, **(data or {})},
                 "model": {"image": {"projector": {"type": projector}, **(image or {})}, "llm": {}}}
    if llm is not None:
        overrides["model"]["llm"]["random_config"] = llm
    if tokenizer is not None:
        overrides["model"]["llm"]["tokenizer"] = str(tokenizer)
    recipe = materialize_random(load_recipe(CONFIGS / "tiny-stage1.yaml", overrides), folder / "base")
    model, _ = build_model(recipe)
    save_trained_weights(model, folder)
    save_recipe(portable(recipe, folder), folder / RECIPE_FILE)
    return folder


def shape_image() -> Image.Image:
    return draw_shape("red", "circle", size=64, seed=3)


def omnilm_outputs(model, processor, image, question=QUESTION, new_tokens=6):
    """(prompt ids with the LLaVA image id, logits of the prompt, greedy continuation)."""
    encoded = processor.encode_prompt(Sample([Message("user", f"<image>\n{question}")], images=[image]))
    ids = encoded.input_ids[None]
    with torch.no_grad():
        logits = model(input_ids=ids, media=encoded.media).logits[0]
        tokens = model.generate(ids, torch.ones_like(ids), media=encoded.media, max_new_tokens=new_tokens,
                                do_sample=False)[0]
    return ids[0], logits, tokens


def llava_outputs(folder, image, question=QUESTION, new_tokens=6, text_first=False,
                  model_class=LlavaForConditionalGeneration):
    """(prompt ids, logits, greedy continuation, config) of a transformers folder, through its own processor."""
    model = model_class.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    parts = [{"type": "image", "image": image}, {"type": "text", "text": question}]
    messages = [{"role": "user", "content": parts[::-1] if text_first else parts}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        tokens = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    return inputs["input_ids"][0], logits, tokens, model.config


def assert_same_answers(run_or_model, folder, image=None, atol=1e-4, text_first=False):
    model, processor = load_pretrained(run_or_model) if not isinstance(run_or_model, tuple) else run_or_model
    image = image or shape_image()
    ids, logits, tokens = omnilm_outputs(model, processor, image)
    llava_ids, llava_logits, llava_tokens, config = llava_outputs(folder, image, text_first=text_first)
    # the same prompt, token for token (each placeholder as LLaVA's image token, the end token after)
    assert llava_ids.tolist() == ids.masked_fill(ids == PLACEHOLDER_IDS["image"], config.image_token_index).tolist()
    vocab = len(processor.tokenizer)  # the LLM's own tokens; rows added for <image> are never generated
    assert (logits[:, :vocab] - llava_logits[:, :vocab]).abs().max().item() < atol
    assert llava_tokens.tolist() == tokens.tolist()
    return config


@pytest.mark.parametrize("image", [{"drop_cls": True, "layer": -1}, {"drop_cls": False, "layer": -2},
                                   {"drop_cls": True, "layer": -2, "end_token_id": None}])
def test_clip_export_answers_as_omnilm_does(tmp_path, image):
    run = tiny_run(tmp_path / "run", image=image)
    assert main(["export", "--format", "llava", "--model", str(run), "--out", str(tmp_path / "llava")]) == 0
    config = assert_same_answers(run, tmp_path / "llava")
    assert config.vision_feature_layer == image["layer"]
    assert config.vision_feature_select_strategy == ("default" if image["drop_cls"] else "full")


@pytest.mark.parametrize("layer", [-2, 3])  # 3: the last layer, before SigLIP's post-layernorm
def test_siglip_export_answers_as_omnilm_does(tmp_path, layer):
    run = tiny_run(tmp_path / "run", image={"type": "siglip", "random_config": TINY_SIGLIP, "layer": layer,
                                            "drop_cls": True})
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    assert assert_same_answers(run, tmp_path / "llava").vision_feature_select_strategy == "full"


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_llama_and_qwen2_exports_answer_as_omnilm_does(tmp_path, llm):
    run = tiny_run(tmp_path / "run", llm=TINY_LLMS[llm], image={"random_config": TINY_CLIP}, template="plain")
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    assert_same_answers(run, tmp_path / "llava")


def test_the_tokenizers_own_chat_template_with_media_first_renders_as_omnilm_does(tmp_path):
    """template: chat (the tokenizer's own, behind the generated preamble), a system prompt, and
    media_first: a client's text-then-image content list gets omnilm's image-first prompt."""
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    run = tiny_run(tmp_path / "run", template="chat", tokenizer=tmp_path / "tokenizer",
                   data={"media_first": True, "system": "Answer briefly."})
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    assert_same_answers(run, tmp_path / "llava", text_first=True)


def test_the_end_of_image_token_is_written_by_the_chat_template(tmp_path):
    """The seed's "end of image" token follows each image's features in omnilm; the exported
    processor writes it after the image tokens, so the prompts are identical."""
    run = tiny_run(tmp_path / "run", image={"end_token_id": 258})
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    messages = [{"role": "user", "content": [{"type": "image", "image": shape_image()}, {"type": "text", "text": "hi"}]}]
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ids = ids[0] if isinstance(ids[0], list) else ids
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    last_image = max(i for i, t in enumerate(ids) if t == image_id)
    assert ids.count(image_id) == 16 and ids[last_image + 1] == 258


def test_an_ordinary_word_as_end_token_gets_a_stand_in_with_its_embedding(tmp_path):
    """An end token that is an ordinary vocabulary entry ('e', 101, here; Phi-2's 23893) would merge
    with the text after it in LLaVA's tokenizer: a special stand-in token with its embedding is used."""
    run = tiny_run(tmp_path / "run", image={"end_token_id": 101})
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    model, processor = load_pretrained(run)
    image = shape_image()
    ids, logits, tokens = omnilm_outputs(model, processor, image)
    llava_ids, llava_logits, llava_tokens, config = llava_outputs(tmp_path / "llava", image)
    stand_in = AutoProcessor.from_pretrained(tmp_path / "llava").tokenizer.convert_tokens_to_ids("<|image_end|>")
    expected = ids.masked_fill(ids == PLACEHOLDER_IDS["image"], config.image_token_index)
    expected[(ids == 101).nonzero()[0]] = stand_in  # the first 101 is the end token, right after the image
    assert llava_ids.tolist() == expected.tolist()
    assert (logits[:, :259] - llava_logits[:, :259]).abs().max().item() < 1e-4
    assert llava_tokens.tolist() == tokens.tolist()


def test_export_folder_has_what_vllm_reads_and_loads_without_leftovers(tmp_path):
    run = tiny_run(tmp_path / "run")
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    config = json.loads((tmp_path / "llava" / "config.json").read_text())
    assert [f for f in VLLM_CONFIG_FIELDS if f not in config] == []
    assert [f for f in VLLM_VISION_FIELDS if f not in config["vision_config"]] == []
    assert [f for f in VLLM_TEXT_FIELDS if f not in config["text_config"]] == []
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["text_config"]["architectures"] == ["PhiForCausalLM"]
    with safe_open(str(tmp_path / "llava" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert [k for k in keys if not k.startswith(WEIGHT_PREFIXES)] == []
    _, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] <= {"lm_head.bias"}  # Phi's (zero) LM-head bias: vLLM's Phi reads it
    processor = json.loads((tmp_path / "llava" / "processor_config.json").read_text())
    assert processor["patch_size"] == 8 and processor["vision_feature_select_strategy"] == "default"
    card = (tmp_path / "llava" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "vllm serve llava" in card
    assert "LlavaForConditionalGeneration.from_pretrained" in card


def test_pipeline_answers_from_the_folder(tmp_path):
    run = tiny_run(tmp_path / "run")
    export(*load_pretrained(run), tmp_path / "llava", "llava")
    image = shape_image()
    answer = pipeline("image-text-to-text", model=str(tmp_path / "llava"))(
        text=[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}],
        max_new_tokens=6, return_full_text=False)
    _, _, tokens = omnilm_outputs(*load_pretrained(run), image)
    processor = load_pretrained(run)[1]
    assert answer[0]["generated_text"] == processor.decode(tokens)
    assert len(answer[0]["generated_text"]) > 0, "the tiny model answered nothing: nothing was compared"


@pytest.mark.parametrize("setting, message", [
    ({"projector": "resblock"}, "model.image.projector.type: 'resblock': LLaVA's projector is linear -> GELU -> linear; "
                                "nearest exportable choice: projector type mlp2x_gelu"),
    ({"image": {"type": "siglip", "random_config": TINY_SIGLIP, "layer": -1}},
     "model.image.layer: -1 with SigLIP is the output after SigLIP's post-layernorm"),
])
def test_what_llava_cannot_express_is_refused_in_one_line_leaving_nothing(tmp_path, capsys, setting, message):
    run = tiny_run(tmp_path / "run", **setting)
    out = tmp_path / "llava"
    capsys.readouterr()  # what building the run printed
    assert main(["export", "--format", "llava", "--model", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]  # no folder, no temporary


def test_an_audio_model_is_refused(tmp_path, capsys):
    from test_serve_support import write_tiny_model

    run = write_tiny_model(tmp_path / "run", audio=True)
    with pytest.raises(NotExpressible, match="model.audio: LLaVA models take images only"):
        export(*load_pretrained(run), tmp_path / "llava", "llava")
    assert not (tmp_path / "llava").exists() and not (tmp_path / "llava.tmp").exists()


def test_a_non_zero_lm_head_bias_is_refused_unless_kept_for_vllm(tmp_path):
    run = tiny_run(tmp_path / "run")
    model, processor = load_pretrained(run)
    with torch.no_grad():
        model.llm.lm_head.bias.fill_(0.5)  # Phi-2's is trained; transformers' LLaVA has no place for it
    with pytest.raises(NotExpressible, match="LM head has a non-zero bias"):
        export(model, processor, tmp_path / "llava", "llava")
    export(model, processor, tmp_path / "llava", "llava", keep_lm_head_bias=True)
    with safe_open(str(tmp_path / "llava" / "model.safetensors"), "pt") as f:
        bias, head = f.get_tensor("language_model.lm_head.bias"), f.get_tensor("language_model.lm_head.weight")
    assert bias.shape[0] == head.shape[0] == 260  # one row more, for <image>
    assert torch.equal(bias[:259], torch.full((259,), 0.5)) and bias[259] == 0


def test_push_to_hub_offline_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["export", "--format", "llava", "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "x"),
                 "--push-to-hub", "someone/tiny-llava"])
    assert code == 2 and "--push-to-hub someone/tiny-llava: HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_push_to_hub_unreachable_hub_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code = main(["export", "--format", "llava", "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "x"),
                 "--push-to-hub", "someone/tiny-llava"])
    assert code == 2 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# starting from a LLaVA checkpoint


def transformers_llava(folder):
    """A random tiny LLaVA folder made by transformers alone (Llama + CLIP, llava-1.5's settings)."""
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    text = LlamaConfig(**{k: v for k, v in TINY_LLMS["llama"].items() if k != "model_type"} | {"vocab_size": 260})
    config = LlavaConfig(vision_config=CLIPVisionConfig(**{k: v for k, v in TINY_CLIP.items() if k != "model_type"}),
                         text_config=text, image_token_index=259, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}{% endif %}\n{% endfor %}")
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=template).save_pretrained(folder)
    return folder


def llava_recipe(tiny_data, llava, tmp_path, **train_cfg):
    return load_recipe(CONFIGS / "tiny-stage2.yaml", {
        "model": {"init_from": str(llava), "image": None,
                  "llm": {"name_or_path": "ignored/by-llava", "quantization": "none",
                          "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}},
        "data": {"path": str(tiny_data["llava"]), "image_dir": str(tiny_data["llava_images"]), "template": "plain",
                 "max_length": 200},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2, "log_every": 1,
                  **train_cfg}})


def test_a_transformers_llava_folder_starts_a_stage_and_round_trips(tiny_data, tmp_path):
    llava = transformers_llava(tmp_path / "llava-hf")
    recipe = llava_recipe(tiny_data, llava, tmp_path)
    model, processor = build_model(recipe, base_dir=tmp_path / "base")
    assert model.recipe.model.image.layer == -2 and model.recipe.model.image.drop_cls
    assert {n for n in model.inherited} == {f"projectors.image.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")}
    # omnilm built from the checkpoint computes what transformers computes from it
    image = shape_image()
    ids, logits, _ = omnilm_outputs(model.eval(), processor, image)
    reference = LlavaForConditionalGeneration.from_pretrained(llava).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids.masked_fill(ids < 0, 259)[None],
                             pixel_values=torch.stack(processor.load_media(
                                 Sample([Message("user", "<image>")], images=[image]))[0]["image"])).logits[0]
    assert (logits[:, :259] - expected[:, :259]).abs().max().item() < 1e-4

    run = train(recipe, progress=False).run_dir  # one stage-2 step: projector + LoRA
    assert (run / "metrics.jsonl").is_file()
    assert main(["export", "--format", "llava", "--model", str(run), "--out", str(tmp_path / "back")]) == 0
    assert_same_answers(run, tmp_path / "back")
    assert "loss" in (tmp_path / "back" / "README.md").read_text()


def test_a_missing_hub_checkpoint_is_one_clear_error(tiny_data, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = llava_recipe(tiny_data, "llava-hf/llava-1.5-7b-hf", tmp_path)
    from omnilm.errors import ConfigError

    with pytest.raises(ConfigError, match="model.init_from 'llava-hf/llava-1.5-7b-hf': no such run, export or LLaVA"):
        build_model(recipe, base_dir=tmp_path / "base")


def test_qlora_run_exports_dequantized_and_merged(tiny_data, tmp_path):
    stage1 = train(load_recipe(CONFIGS / "tiny-stage1.yaml", {
        "model": {"image": {"projector": {"type": "mlp2x_gelu"}}},
        "data": {"path": str(tiny_data["coco"]), "image_dir": str(tiny_data["coco_images"])},
        "train": {"output_dir": str(tmp_path / "s1"), "max_steps": 1}}), progress=False).run_dir
    stage2 = train(load_recipe(CONFIGS / "tiny-stage2.yaml", {
        "model": {"init_from": str(stage1), "llm": {"name_or_path": str(stage1 / "base" / "llm")},
                  "image": {"name_or_path": str(stage1 / "base" / "image_encoder"), "projector": {"type": "mlp2x_gelu"}}},
        "data": {"path": str(tiny_data["llava"]), "image_dir": str(tiny_data["llava_images"]), "max_length": 256},
        "train": {"output_dir": str(tmp_path / "s2"), "max_steps": 2, "lr": 5e-2}}), progress=False).run_dir
    qlora, processor = load_pretrained(stage2)
    export(qlora, processor, tmp_path / "plain")  # omnilm's own export: merged, dequantized
    export(qlora, processor, tmp_path / "llava", "llava")
    assert_same_answers(tmp_path / "plain", tmp_path / "llava")
    # against the 4-bit + LoRA model itself: the tolerance tests/test_stage2.py states for merging
    image = shape_image()
    _, logits, _ = omnilm_outputs(qlora, processor, image)
    _, llava_logits, _, _ = llava_outputs(tmp_path / "llava", image)
    assert (logits[:, :259] - llava_logits[:, :259]).abs().max().item() < 1e-3


@pytest.mark.parametrize("seed, servable", [("phi2-tinyclip-stage1.yaml", "phi2-tinyclip-stage1-llava.yaml"),
                                            ("phi2-tinyclip-stage2-qlora.yaml", "phi2-tinyclip-stage2-llava.yaml")])
def test_servable_seed_variants_differ_from_the_seed_only_in_projector_and_run_folders(seed, servable):
    def flat(node, path=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{path}.{key}".lstrip(".")).items()}
        return {path: node}

    a, b = flat(load_recipe(CONFIGS / seed).to_dict()), flat(load_recipe(CONFIGS / servable).to_dict())
    changed = {key: (a[key], b[key]) for key in a if a[key] != b[key]}
    assert changed.pop("model.image.projector.type") == ("resblock", "mlp2x_gelu")
    assert set(changed) <= {"train.output_dir", "model.init_from"}
    assert all("llava" in new and "llava" not in old for old, new in changed.values())


@pytest.mark.parametrize("image, message", [
    ({"type": "efficientnet_lite0", "random_config": {}, "drop_cls": True},
     "model.image.type: 'efficientnet_lite0': LLaVA's vision tower is CLIP or SigLIP; nearest exportable choice: "
     "model.image.type: clip or siglip"),
    ({"projector": {"type": "mlp2x_gelu", "tokens_per_feature": 2}},
     "model.image.projector.tokens_per_feature: 2: LLaVA makes one token per feature"),
])
def test_recipes_llava_cannot_express_are_refused_before_any_model_is_built(image, message):
    from omnilm.model.llava_format import vision_choice

    recipe = load_recipe(CONFIGS / "tiny-stage1.yaml", {"model": {"image": image}})
    with pytest.raises(NotExpressible) as err:
        vision_choice(recipe, None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_omnilm_format_exports_get_a_model_card_too(tmp_path):
    run = tiny_run(tmp_path / "run", projector="resblock")
    export(*load_pretrained(run), tmp_path / "mine")
    card = (tmp_path / "mine" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: omnilm") and "omnilm chat --model mine" in card
    assert "projector `resblock`" in card and load_pretrained(tmp_path / "mine")[0] is not None


# ---------------------------------------------------------------------------------------------
# a real BPE tokenizer (SmolLM2's, offline): segments tokenized apart vs the whole prompt at once

SMOLLM2 = "zoo:smollm2-135m-instruct"
TINY_SMOLLM2 = {**TINY_LLMS["llama"], "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
SYSTEM = "You answer in one word."
# words whose BPE merges across the places omnilm renders apart (turn edges, after the image, a space)
QUESTIONS = [QUESTION, " leading space, trailing newline?\n", "colour\n\nof it? 12345 ünïcödé"]


def chat_outputs_of_both(run, folder, question, system, new_tokens=6):
    """(omnilm's prompt ids with LLaVA's image id, its greedy tokens), then transformers' pair, for one chat."""
    model, processor = load_pretrained(run)
    turns = [Message("system", system)] if system else []
    sample = Sample([*turns, Message("user", f"<image>\n{question}")], images=[shape_image()])
    encoded = processor.encode_prompt(sample)
    ids = encoded.input_ids[None]
    with torch.no_grad():
        tokens = model.generate(ids, torch.ones_like(ids), media=encoded.media, max_new_tokens=new_tokens,
                                do_sample=False)[0]
    llava = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    llava_processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    messages.append({"role": "user", "content": [{"type": "image", "image": shape_image()},
                                                  {"type": "text", "text": question}]})
    inputs = llava_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, return_tensors="pt")
    with torch.no_grad():
        llava_tokens = llava.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    omnilm_ids = ids[0].masked_fill(ids[0] == PLACEHOLDER_IDS["image"], llava.config.image_token_index)
    return (omnilm_ids.tolist(), tokens.tolist()), (inputs["input_ids"][0].tolist(),
                                                    llava_tokens[0, inputs["input_ids"].shape[1]:].tolist())


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer and chat template + a tiny CLIP, exported."""
    pytest.importorskip("gguf", reason="pip install --no-deps gguf==0.19.0 (the zoo's SmolLM2 conversion)")
    root = tmp_path_factory.mktemp("smollm2")
    run = tiny_run(root / "run", llm=TINY_SMOLLM2, image={"random_config": TINY_CLIP, "end_token_id": None},
                   template="chat", tokenizer=SMOLLM2)
    export(*load_pretrained(run), root / "llava", "llava")
    return run, root / "llava"


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("question", QUESTIONS, ids=["question", "spaces", "newlines-digits-unicode"])
def test_smollm2s_real_tokenizer_gives_the_same_ids_and_answer_both_ways(smollm2_export, question, system):
    (ids, tokens), (llava_ids, llava_tokens) = chat_outputs_of_both(*smollm2_export, question, system)
    assert llava_ids == ids
    assert llava_tokens == tokens


def test_exporting_over_an_export_replaces_it_whole(tmp_path):
    run = tiny_run(tmp_path / "run", projector="resblock")
    model, processor = load_pretrained(run)
    export(model, processor, tmp_path / "mine")
    (tmp_path / "mine" / "left-from-before.txt").write_text("old")
    export(model, processor, tmp_path / "mine")
    assert not (tmp_path / "mine" / "left-from-before.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]  # no .tmp or .old beside it
    assert load_pretrained(tmp_path / "mine")[0] is not None
