"""The native audio route inside OmniLM: placeholders follow audio length, mixed batches,
audio-align trains only the audio projector, end to end on espeak-ng speech."""
import numpy as np
import torch

from omnilm.config import load_recipe
from omnilm.data.collate import collate
from omnilm.data.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.model.build import build_model
from omnilm.train.loop import train
from omnilm.train.stages import apply_stage
from tests.conftest import CONFIGS

SR = 16000


def mixed_recipe(tiny_data, tmp_path, **train_cfg):
    image = load_recipe(CONFIGS / "tiny-stage1.yaml").model.image
    recipe = load_recipe(CONFIGS / "tiny-audio.yaml", {
        "data": {"path": str(tiny_data["root"] / "asr" / "manifest.jsonl")},
        "train": {"output_dir": str(tmp_path / "run"), **train_cfg}})
    recipe.model.image = image
    return recipe


def test_audio_placeholders_follow_the_real_length(tiny_data, tmp_path):
    model, processor = build_model(mixed_recipe(tiny_data, tmp_path))
    for seconds in (1.0, 2.5, 7.3):
        wave = np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32) * 0.1
        enc = processor(Sample([Message("user", "<audio>"), Message("assistant", "x")], audios=[wave]))
        n = int((enc.input_ids == PLACEHOLDER_IDS["audio"]).sum())
        frames = int(np.ceil(seconds * 100 / 2))  # 100 mel frames/s, conv stride 2
        assert n == int(np.ceil(frames / 8)), (seconds, n)


def test_image_audio_and_text_in_one_batch_and_audio_align_gradients(tiny_data, tmp_path):
    model, processor = build_model(mixed_recipe(tiny_data, tmp_path))
    img = sorted(tiny_data["coco_images"].iterdir())[0]
    wav = sorted((tiny_data["root"] / "asr").glob("*.wav"))[0]
    samples = [
        Sample([Message("user", "<audio> about <image>"), Message("assistant", "a shape")], images=[img], audios=[wav]),
        Sample([Message("user", "<image>"), Message("assistant", "red")], images=[img]),
        Sample([Message("user", "just text"), Message("assistant", "ok")]),
        Sample([Message("user", "<audio>\nTranscribe:"), Message("assistant", "a red square")], audios=[wav]),
    ]
    batch = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id)
    assert len(batch.media["image"]) == 2 and len(batch.media["audio"]) == 2
    apply_stage(model, "audio-align")
    model.train()(**batch.model_inputs()).loss.backward()
    with_grad = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"projectors.audio"}
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projectors.audio"))


def test_tiny_audio_recipe_trains_end_to_end(tiny_data, tmp_path):
    recipe = load_recipe(CONFIGS / "tiny-audio.yaml", {
        "data": {"path": str(tiny_data["root"] / "asr" / "manifest.jsonl")},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 20, "log_every": 5}})
    result = train(recipe, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert (result.run_dir / "weights.safetensors").is_file()
