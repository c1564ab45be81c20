"""Frozen media encoders behind one small contract; the CLIP/SigLIP vision towers.

An encoder exposes:
  modality      "image" or "audio"
  hidden_size   width of each output feature vector
  preprocess(item) -> Tensor      one raw item (PIL image / 16 kHz waveform) -> model input
  num_tokens(inputs) -> int       how many feature vectors that input becomes
  forward(list[Tensor]) -> list[Tensor [T_i, hidden_size]]
Constructors take built modules and do no I/O; `build_encoder` does the loading, through the
type's entry in omnilm.core.components.ENCODERS.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoImageProcessor, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig,
                          SiglipVisionModel)
from transformers.utils import cached_file

from omnilm.config import EncoderConfig
from omnilm.data.images import CLIP_MEAN, CLIP_STD, ImageTransform
from omnilm.errors import ConfigError
from omnilm.core.components import encoder_spec

PREPROCESSOR_FILE = "preprocessor_config.json"
VISION_TOWERS = {  # config model_type -> (config class, vision model class)
    "clip": (CLIPVisionConfig, CLIPVisionModel),
    "clip_vision_model": (CLIPVisionConfig, CLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
    "siglip_vision_model": (SiglipVisionConfig, SiglipVisionModel),
}


class VisionTowerEncoder(nn.Module):
    """A Hugging Face CLIP/SigLIP vision tower: patch tokens of one hidden layer."""

    modality = "image"

    def __init__(self, tower: nn.Module, transform, layer: int = -1, drop_cls: bool = True):
        super().__init__()
        self.tower = tower
        self.transform = transform
        self.layer = layer
        # SigLIP has no CLS token: its sequence is patches only.
        self.has_cls = isinstance(tower, CLIPVisionModel)
        self.drop_cls = drop_cls and self.has_cls
        cfg = tower.config
        self.hidden_size = cfg.hidden_size
        self.tokens = (cfg.image_size // cfg.patch_size) ** 2 + (self.has_cls and not self.drop_cls)

    def preprocess(self, image) -> torch.Tensor:
        return self.transform(image)  # [3, S, S]

    def save_pretrained(self, path) -> None:
        """A folder `name_or_path` can load again: the tower plus its preprocessing."""
        self.tower.save_pretrained(path)
        if isinstance(self.transform, FolderImageProcessor):
            self.transform.processor.save_pretrained(path)
        else:
            stats = {"image_mean": self.transform.mean.flatten().tolist(),
                     "image_std": self.transform.std.flatten().tolist()}
            (Path(path) / PREPROCESSOR_FILE).write_text(json.dumps(stats, indent=2))

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return self.tokens

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        pixels = torch.stack(inputs).to(self.tower.dtype)  # [N, 3, S, S]
        out = self.tower(pixel_values=pixels, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # [N, 1+P, D]
        if self.drop_cls:
            hidden = hidden[:, 1:]  # [N, P, D]
        return list(hidden.unbind(0))


class FolderImageProcessor:
    """A pretrained folder's own image processor (transformers' AutoImageProcessor), so a tower sees
    its images as it did in training: CLIP resizes and centre-crops, SigLIP resizes to a square."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]  # [3, H, W]


def build_vision_tower(cfg: EncoderConfig, seed: int) -> VisionTowerEncoder:
    if cfg.random_config is not None:
        params = dict(cfg.random_config)
        model_type = params.pop("model_type", "clip_vision_model")
        if model_type not in VISION_TOWERS:
            raise ConfigError(f"model.image.random_config.model_type {model_type!r}: use one of {', '.join(VISION_TOWERS)}")
        config_cls, model_cls = VISION_TOWERS[model_type]
        torch.manual_seed(seed)
        tower = model_cls(config_cls(**params))
    else:
        model_type = AutoConfig.from_pretrained(cfg.name_or_path).model_type
        if model_type not in VISION_TOWERS:
            raise ConfigError(f"{cfg.name_or_path} is a {model_type!r} model, not a CLIP/SigLIP vision tower")
        tower = VISION_TOWERS[model_type][1].from_pretrained(cfg.name_or_path)
    size = cfg.image_size or tower.config.image_size
    if size != tower.config.image_size:
        raise ConfigError(f"image_size {size} differs from the tower's {tower.config.image_size}")
    return VisionTowerEncoder(tower, _image_transform(cfg, size), cfg.layer, cfg.drop_cls)


def _image_transform(cfg: EncoderConfig, size: int):
    """The folder's own image processor when it has one; else resize, centre-crop and normalize
    with the folder's statistics (CLIP's for a random tower)."""
    if cfg.random_config is not None:
        return ImageTransform(size, CLIP_MEAN, CLIP_STD)
    config = _preprocessor_config(cfg.name_or_path)
    if "image_processor_type" in config:  # the PIL backend: no torchvision needed
        return FolderImageProcessor(AutoImageProcessor.from_pretrained(cfg.name_or_path, backend="pil"))
    # e.g. a tower omnilm saved from a random_config: normalization statistics only
    return ImageTransform(size, config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD))


def _preprocessor_config(name_or_path: str) -> dict:
    """The folder's (or hub repo's) preprocessor_config.json, or {} when it has none."""
    file = Path(name_or_path) / PREPROCESSOR_FILE
    if not file.is_file() and not Path(name_or_path).exists():
        resolved = cached_file(name_or_path, PREPROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
        file = Path(resolved) if resolved else file
    return json.loads(file.read_text()) if file.is_file() else {}


def build_encoder(cfg: EncoderConfig, seed: int = 0) -> nn.Module:
    return encoder_spec(cfg.type, "encoder type").build(cfg, seed)
