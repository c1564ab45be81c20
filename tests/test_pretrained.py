"""OmniLM and OmniProcessor as transformers classes: model folders written by save_pretrained and by
training, read by from_pretrained and the Auto classes; older run folders still load."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_recipe

from omnilm.config import LoraConfig
from omnilm.core.sample import Message, Sample
from omnilm.model.build import build_model
from omnilm.model.omni import OmniLM
from omnilm.model.processing import OmniProcessor
from omnilm.model.saved import CONFIG_FILE, is_model_folder, load_pretrained, write_model_folder
from omnilm.training.loop import train

LLMS = {  # tiny random causal LMs of three families: Phi (the seed's), Llama (tied embeddings), Qwen2
    "phi": {},
    "llama": {"model_type": "llama", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "tie_word_embeddings": True, "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257},
    "qwen2": {"model_type": "qwen2", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257},
}


def _ask(tiny_data) -> Sample:
    image = sorted(tiny_data["coco_images"].iterdir())[0]
    return Sample([Message("user", "<image>\nWhat is it?")], images=[str(image)])


def _logits(model, processor, sample):
    encoded = processor.encode_prompt(sample)
    media = {m: [x.to(model.dtype) for x in xs] for m, xs in encoded.media.items()}
    with torch.no_grad():
        return model(encoded.input_ids[None], media=media).logits.float()


@pytest.mark.parametrize("family", sorted(LLMS))
def test_save_and_from_pretrained_give_the_same_logits(tiny_data, tmp_path, family):
    sections = {"model": {"llm": {"random_config": {**load_tiny_llm(), **LLMS[family]}}}} if LLMS[family] else {}
    recipe = tiny_recipe(tiny_data, tmp_path, **sections)
    recipe.model.llm.lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model, processor = build_model(recipe)
    model.eval()
    with torch.no_grad():  # LoRA B starts at zero: give it something to merge
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    folder = write_model_folder(model, processor, tmp_path / "folder")
    assert is_model_folder(folder) and not list(folder.glob("*.tmp"))

    loaded = OmniLM.from_pretrained(folder)
    again = OmniProcessor.from_pretrained(folder)
    assert not hasattr(loaded.llm, "get_base_model")  # a plain transformers LLM, LoRA merged in
    sample = _ask(tiny_data)
    assert torch.equal(again.encode_prompt(sample).input_ids, processor.encode_prompt(sample).input_ids)
    torch.testing.assert_close(_logits(loaded, again, sample), _logits(model, processor, sample),
                               atol=1e-4, rtol=1e-4)  # float sums of the merge: W + B @ A * scale
    if family == "llama":  # tied embeddings stay tied through the folder
        assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.model.embed_tokens.weight.data_ptr()


def load_tiny_llm() -> dict:
    from omnilm.config import load_recipe
    from conftest import CONFIGS

    return dict(load_recipe(CONFIGS / "tiny-stage1.yaml").model.llm.random_config)


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """A tiny Whisper + Phi model saved as a folder."""
    from conftest import CONFIGS

    from omnilm.config import load_recipe

    model, processor = build_model(load_recipe(CONFIGS / "tiny-audio.yaml"))
    return write_model_folder(model.eval(), processor, tmp_path_factory.mktemp("audio") / "folder"), model


def test_audio_model_round_trip_and_load_options(audio_folder):
    folder, model = audio_folder
    ids = torch.tensor([[3, 4, 5, 6]])
    mel = [torch.randn(80, 200)]
    reference = model(ids, media={}).logits
    loaded = OmniLM.from_pretrained(folder, device_map="cpu")
    assert loaded.device.type == "cpu"
    torch.testing.assert_close(loaded(ids).logits, reference)
    features = loaded.media_features("audio", mel, None)  # the encoder and projector came back too
    torch.testing.assert_close(features, model.media_features("audio", mel, None))

    half = OmniLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(half(ids).logits.float(), reference, atol=0.1, rtol=0.1)
    assert {"PhiDecoderLayer", "WhisperEncoderLayer"} <= set(loaded._no_split_modules)


def test_nf4_through_quantization_config_quantizes_the_llm_only(audio_folder):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    folder, model = audio_folder
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = OmniLM.from_pretrained(folder, quantization_config=nf4, device_map="cpu")
    quantized = [name for name, module in loaded.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert quantized and all(name.startswith("llm.model.layers.") for name in quantized)
    assert nf4.llm_int8_skip_modules is None  # the caller's config is left as it was
    ids = torch.tensor([[3, 4, 5, 6]])
    logits, reference = loaded(ids).logits, model(ids).logits
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    assert not torch.equal(logits, reference)  # 4-bit weights compute something close, not the same


def test_auto_classes_load_a_finished_run(tiny_data, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoProcessor

    recipe = tiny_recipe(tiny_data, tmp_path, train={"max_steps": 2, "save_every": 1, "log_every": 1})
    run = train(recipe, progress=False).run_dir
    assert AutoConfig.from_pretrained(run).model_type == "omnilm"
    model, processor = AutoModel.from_pretrained(run), AutoProcessor.from_pretrained(run)
    assert isinstance(model, OmniLM) and isinstance(processor, OmniProcessor)
    reference, same = load_pretrained(run)
    sample = _ask(tiny_data)
    torch.testing.assert_close(_logits(model, processor, sample), _logits(reference, same, sample))


def test_a_run_folder_from_before_model_folders_loads_and_converts(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, train={"max_steps": 2, "save_every": 1, "log_every": 1})
    run = train(recipe, progress=False).run_dir
    new_model, new_processor = load_pretrained(run)
    for file in run.iterdir():  # what the release before model folders wrote: recipe, weights, checkpoints
        if file.name not in ("recipe.yaml", "weights.safetensors", "checkpoints", "base", "metrics.jsonl"):
            shutil.rmtree(file) if file.is_dir() else file.unlink()
    assert not is_model_folder(run)
    old_model, old_processor = load_pretrained(run)  # rebuilt from its recipe
    sample = _ask(tiny_data)
    expected = _logits(new_model, new_processor, sample)
    torch.testing.assert_close(_logits(old_model, old_processor, sample), expected)

    done = subprocess.run([sys.executable, "-m", "omnilm.cli", "convert", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert is_model_folder(run) and (run / CONFIG_FILE).is_file()
    converted, converted_processor = load_pretrained(run)
    torch.testing.assert_close(_logits(converted, converted_processor, sample), expected)


def test_init_from_a_model_folder_takes_its_projectors(tiny_data, tmp_path):
    model, processor = build_model(tiny_recipe(tiny_data, tmp_path))
    with torch.no_grad():
        for param in model.projectors.parameters():
            param.add_(1.0)
    folder = write_model_folder(model, processor, tmp_path / "export")
    started = build_model(tiny_recipe(tiny_data, tmp_path, model={"init_from": str(folder)}))[0]
    for (name, mine), theirs in zip(started.projectors.named_parameters(), model.projectors.parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)


def test_building_keeps_loaded_weights_and_fresh_lora(tiny_data, tmp_path):
    """post_init must not re-initialize what was loaded: LoRA's B stays zero (the adapted model
    starts as its base), the LLM and encoder weights stay as their folders hold them."""
    from transformers import AutoModelForCausalLM

    recipe = tiny_recipe(tiny_data, tmp_path)
    recipe.model.llm.lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model, _ = build_model(recipe, base_dir=tmp_path / "base")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(not p.any() for p in lora_b)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "base" / "llm").state_dict()
    base = model.llm.get_base_model().state_dict()
    for name, tensor in saved.items():
        module, _, leaf = name.rpartition(".")
        torch.testing.assert_close(base.get(name, base.get(f"{module}.base_layer.{leaf}")), tensor, msg=name)


def test_a_model_folder_needs_omnilm_imported(audio_folder):
    """What the README says: the folder holds no remote code, so transformers alone does not know
    model_type omnilm; importing OmniLM registers it."""
    folder, _ = audio_folder
    code = ("import sys; from transformers import AutoConfig\n"
            "try:\n    AutoConfig.from_pretrained(sys.argv[1])\nexcept ValueError as err:\n"
            "    print('refused:', 'omnilm' in str(err))\n"
            "import omnilm.model.omni\nprint(AutoConfig.from_pretrained(sys.argv[1]).model_type)\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True)
    assert done.stdout.split("\n")[:2] == ["refused: True", "omnilm"], done.stderr[-2000:]
