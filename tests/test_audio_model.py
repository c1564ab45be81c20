"""The native audio route inside OmniLM: placeholders follow audio length, mixed batches,
audio-align trains only the audio projector, end to end on espeak-ng speech."""
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from omnilm.config import load_recipe
from omnilm.data.collate import collate
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.model.build import build_model
from omnilm.model.checkpoint import load_trained_weights
from omnilm.model.projector import FrameStack
from omnilm.training.loop import train
from omnilm.training.stages import apply_stage
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


def test_stacking_moved_into_the_projector_keeps_the_numbers():
    """Frame stacking used to happen in the Whisper encoder; the tiny audio model's projected audio
    embeddings and logits were recorded on that code (tests/data) and must not change."""
    # Recorded outputs (token ids, projected audio embeddings, logits), not weights.
    with np.load(Path(__file__).parent / "data" / "tiny_audio_before_stacking_moved.npz") as recorded:
        reference = {name: torch.from_numpy(recorded[name]) for name in recorded.files}
    model, processor = build_model(load_recipe(CONFIGS / "tiny-audio.yaml"))
    model.eval()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (0.5, 2.345)]
    encoded = processor.encode_prompt(Sample([Message("user", "<audio> and <audio>\nTranscribe:")], audios=waves))
    assert isinstance(model.projectors["audio"], FrameStack) and model.encoders["audio"].hidden_size == 32
    assert torch.equal(encoded.input_ids, reference["input_ids"])  # 4 + 15 stacked tokens, not 25 + 118 frames
    with torch.no_grad():
        embeddings = model.media_features("audio", encoded.media["audio"], None)
        logits = model(encoded.input_ids[None], media=encoded.media).logits[0]
    torch.testing.assert_close(embeddings, reference["audio_embeddings"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-4)


def test_audio_weights_saved_before_stacking_moved_still_load(tmp_path):
    model, _ = build_model(load_recipe(CONFIGS / "tiny-audio.yaml"))
    old_names = {n.replace("projectors.audio.inner.", "projectors.audio."): p.detach() + 1
                 for n, p in model.named_parameters() if n.startswith("projectors.audio.")}
    save_file(old_names, str(tmp_path / "weights.safetensors"))
    assert sorted(load_trained_weights(model, tmp_path)) == sorted(
        n for n, _ in model.named_parameters() if n.startswith("projectors.audio."))
    weight = dict(model.named_parameters())["projectors.audio.inner.0.weight"]
    torch.testing.assert_close(weight, old_names["projectors.audio.0.weight"])
