"""The weight-free OmniProcessor: built from a recipe and configs alone, saved and loaded with no
model weights anywhere on disk, and encoding a sample exactly as before it was saved."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, WhisperConfig

from omnilm.config import load_recipe
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample
from omnilm.data.fixtures import draw_shape
from omnilm.errors import DataError
from omnilm.model.build import build_processor
from omnilm.model.image_processing import CenterCropImageProcessor
from omnilm.model.processing import OmniProcessor
from tests.conftest import CONFIGS

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def mixed_recipe():
    """A random LLM (byte tokenizer), a random CLIP tower and a random Whisper encoder."""
    recipe = load_recipe(CONFIGS / "tiny-audio.yaml")
    recipe.model.image = load_recipe(CONFIGS / "tiny-stage1.yaml").model.image
    return recipe


def spoken_and_seen() -> Sample:
    wave = (0.1 * np.random.default_rng(0).standard_normal(24_000)).astype(np.float32)  # 1.5 s
    return Sample([Message("user", "<image>\n<audio>\nWhat is it?"), Message("assistant", "a red circle")],
                  images=[draw_shape("red", "circle")], audios=[wave])


def weights_in(folder) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def assert_same_encoding(a, b):
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
    assert a.media.keys() == b.media.keys()
    for modality in a.media:
        for x, y in zip(a.media[modality], b.media[modality], strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_round_trip_with_no_weights_on_disk(tmp_path):
    processor = build_processor(mixed_recipe())
    assert isinstance(processor.image_processor, CenterCropImageProcessor)
    processor.save_pretrained(tmp_path / "processor")
    assert weights_in(tmp_path / "processor") == []
    loaded = OmniProcessor.from_pretrained(tmp_path / "processor")
    sample = spoken_and_seen()
    before, after = processor(sample), loaded(sample)
    assert_same_encoding(before, after)
    assert int((after.input_ids == PLACEHOLDER_IDS["audio"]).sum()) == 10  # 150 mel -> 75 frames, stacked by 8
    assert int((after.input_ids == PLACEHOLDER_IDS["image"]).sum()) == processor.image_tokens == loaded.image_tokens
    assert_same_encoding(processor.encode_prompt(Sample(sample.messages[:1], sample.images, sample.audios)),
                         loaded.encode_prompt(Sample(sample.messages[:1], sample.images, sample.audios)))


def test_a_text_only_processor_saves_no_media_parts(tmp_path):
    recipe = load_recipe(CONFIGS / "tiny-stage1.yaml")
    recipe.model.image = None
    processor = build_processor(recipe)
    processor.save_pretrained(tmp_path)
    loaded = OmniProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor is None and loaded.feature_extractor is None
    text = Sample([Message("user", "hi"), Message("assistant", "hello")])
    assert loaded(text).input_ids.tolist() == processor(text).input_ids.tolist()


def test_encoder_folders_with_configs_only_are_enough(tmp_path):
    """Encoder folders holding config.json and preprocessor_config.json but no weights."""
    tower = tmp_path / "tower"
    CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     image_size=32, patch_size=8).save_pretrained(tower)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower)
    whisper = tmp_path / "whisper"
    WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=4, max_source_positions=1500).save_pretrained(whisper)
    recipe = mixed_recipe()
    recipe.model.image.name_or_path, recipe.model.image.random_config = str(tower), None
    recipe.model.audio.name_or_path, recipe.model.audio.random_config = str(whisper), None
    assert weights_in(tmp_path) == []
    processor = build_processor(recipe)
    assert isinstance(processor.image_processor, CLIPImageProcessorPil)
    assert processor.image_tokens == 16  # (32 / 8)^2, the CLS token dropped
    processor.save_pretrained(tmp_path / "saved")
    assert_same_encoding(processor(spoken_and_seen()), OmniProcessor.from_pretrained(tmp_path / "saved")(spoken_and_seen()))


def test_a_processor_with_an_image_part_needs_its_token_count():
    tokenizer = build_processor(load_recipe(CONFIGS / "tiny-stage1.yaml")).tokenizer
    with pytest.raises(DataError, match="needs image_tokens"):
        OmniProcessor(tokenizer, CenterCropImageProcessor(32))
