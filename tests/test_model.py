"""OmniLM on tiny random parts: placeholder contract, mixed batches, what trains in stage 1."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (AutoImageProcessor, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel,
                          SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel)

from omnilm.config import EncoderConfig
from omnilm.data.collate import collate
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.errors import PlaceholderMismatch
from omnilm.model.build import build_model
from omnilm.model.encoders import build_encoder
from omnilm.model.preprocessors import vision_tower_preprocessor
from omnilm.training.stages import apply_stage
from tests.conftest import CONFIGS, tiny_recipe


@pytest.fixture(scope="module")
def built(tiny_data, tmp_path_factory):
    return build_model(tiny_recipe(tiny_data, tmp_path_factory.mktemp("m")))


@pytest.fixture(scope="module")
def model(built):
    return built[0]


@pytest.fixture(scope="module")
def processor(built):
    return built[1]


def images(tiny_data, n):
    return sorted(tiny_data["coco_images"].iterdir())[:n]


def batch_of(processor, samples):
    return collate([processor(s) for s in samples], processor.tokenizer.pad_token_id)


def test_features_land_exactly_at_placeholders(model, processor, tiny_data):
    two = Sample([Message("user", "<image> and <image>"), Message("assistant", "two shapes")],
                 images=images(tiny_data, 2))
    none = Sample([Message("user", "no picture here"), Message("assistant", "fine")])
    batch = batch_of(processor, [two, none])
    embeds = model.embed(batch.input_ids, batch.media)
    positions = batch.input_ids == PLACEHOLDER_IDS["image"]
    assert positions[0].sum() == 2 * 16 and positions[1].sum() == 0
    with torch.no_grad():
        expected = model.projectors["image"](torch.cat(model.encoders["image"](batch.media["image"])))
    torch.testing.assert_close(embeds[positions], expected)
    text = model.llm.get_input_embeddings()(batch.input_ids[1])
    torch.testing.assert_close(embeds[1], text)  # a sample without images is plain text
    loss = model(**batch.model_inputs()).loss
    assert torch.isfinite(loss)


def test_placeholder_mismatch_names_both_numbers(model, processor, tiny_data):
    sample = Sample([Message("user", "<image>"), Message("assistant", "x")], images=images(tiny_data, 1))
    batch = batch_of(processor, [sample])
    ids = batch.input_ids.clone()
    ids[0, 0] = 65  # one placeholder overwritten by a text token
    with pytest.raises(PlaceholderMismatch, match="image: 15 placeholder positions .* but 16 feature vectors"):
        model.embed(ids, batch.media)


def test_stage1_trains_only_the_projector(tiny_data, tmp_path):
    model, processor = build_model(tiny_recipe(tiny_data, tmp_path))
    apply_stage(model, "align")
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("projectors.")}
    proj_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("projectors.")}
    sample = Sample([Message("user", "<image>"), Message("assistant", "a red square.")], images=images(tiny_data, 1))
    batch = batch_of(processor, [sample, sample])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch.model_inputs()).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("projectors.image.") for n in with_grad)
    opt.step()
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), f"{name} changed"
    assert any(not torch.equal(p, proj_before[n]) for n, p in model.named_parameters() if n in proj_before)


def test_loss_falls_when_overfitting_one_batch(tiny_data, tmp_path):
    model, processor = build_model(tiny_recipe(tiny_data, tmp_path))
    apply_stage(model, "align")
    samples = [Sample([Message("user", "<image>"), Message("assistant", cap)], images=[img])
               for img, cap in zip(images(tiny_data, 4), ["a red square.", "a blue circle.", "a green triangle.",
                                                        "a yellow square."])]
    batch = batch_of(processor, samples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        loss = model(**batch.model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_projector_can_expand_each_feature_into_several_tokens(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, model={"image": {"projector": {"type": "mlp2x_gelu",
                                                                             "tokens_per_feature": 3}}})
    model, processor = build_model(recipe)
    sample = Sample([Message("user", "<image>"), Message("assistant", "x")], images=images(tiny_data, 1))
    batch = batch_of(processor, [sample])
    assert int((batch.input_ids == PLACEHOLDER_IDS["image"]).sum()) == 16 * 3
    embeds = model.embed(batch.input_ids, batch.media)
    with torch.no_grad():
        feats = torch.cat(model.encoders["image"](batch.media["image"]))  # [16, 32]
        expected = model.projectors["image"].inner(feats).reshape(48, -1)  # 3 tokens per feature, in order
    torch.testing.assert_close(embeds[batch.input_ids == PLACEHOLDER_IDS["image"]], expected)


def pixels_of(part, image) -> torch.Tensor:
    return part(image, return_tensors="pt")["pixel_values"][0]  # [3, S, S]


def tower_folder(path, kind: str):
    """A tiny random CLIP or SigLIP tower saved with its own image processor, as on the hub."""
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 image_size=32, patch_size=8)
    if kind == "clip":
        CLIPVisionModel(CLIPVisionConfig(**sizes)).save_pretrained(path)
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    else:
        SiglipVisionModel(SiglipVisionConfig(**sizes)).save_pretrained(path)
        SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_siglip_folder_is_preprocessed_by_its_own_processor_without_a_centre_crop(tmp_path):
    folder = tower_folder(tmp_path / "siglip", "siglip")
    part = vision_tower_preprocessor(EncoderConfig(type="siglip", name_or_path=str(folder))).part
    wide = Image.new("RGB", (128, 32), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 16, 32))  # a red strip at the left edge, which a centre crop cuts away
    pixels = pixels_of(part, wide)  # [3, 32, 32], SigLIP normalization: (x - 0.5) / 0.5
    assert pixels.shape == (3, 32, 32)
    assert pixels[0, :, 0].min() > 0.9 and pixels[2, :, 0].max() < -0.9  # the strip is still there, red
    own = AutoImageProcessor.from_pretrained(folder, backend="pil")(wide, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, own, rtol=0, atol=0)
    build_encoder(EncoderConfig(type="siglip", name_or_path=str(folder))).save_pretrained(tmp_path / "saved")
    part.save_pretrained(tmp_path / "saved")  # an export writes the processor's part beside the tower
    again = vision_tower_preprocessor(EncoderConfig(type="siglip", name_or_path=str(tmp_path / "saved"))).part
    torch.testing.assert_close(pixels_of(again, wide), pixels, rtol=0, atol=0)


def test_clip_folder_keeps_the_centre_crop_of_its_own_processor(tmp_path):
    part = vision_tower_preprocessor(EncoderConfig(type="clip", name_or_path=str(tower_folder(tmp_path, "clip")))).part
    wide = Image.new("RGB", (128, 32), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 16, 32))
    pixels = pixels_of(part, wide)
    assert pixels.shape == (3, 32, 32) and pixels[0].max() < 0  # only the blue centre is kept


def test_a_model_built_in_memory_leaves_no_folder_behind(tmp_path):
    """The random parts' scratch folder lives while the process does (the model reads it), not after."""
    script = ("import sys\n"
              "from omnilm.config import load_recipe\n"
              "from omnilm.model.build import build_model\n"
              "model, _ = build_model(load_recipe(sys.argv[1]))\n"
              "print(model.recipe.model.llm.name_or_path)\n")
    done = subprocess.run([sys.executable, "-c", script, str(CONFIGS / "tiny-stage1.yaml")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.is_relative_to(tmp_path) and folder.parent.name.startswith("omnilm-base-")
    assert not folder.parent.exists() and list(tmp_path.iterdir()) == []
