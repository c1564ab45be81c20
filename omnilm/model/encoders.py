"""Frozen media encoders behind one small contract, and the registry that builds them.

An encoder exposes:
  modality      "image" or "audio"
  hidden_size   width of each output feature vector
  preprocess(item) -> Tensor      one raw item (PIL image / 16 kHz waveform) -> model input
  num_tokens(inputs) -> int       how many feature vectors that input becomes
  forward(list[Tensor]) -> list[Tensor [T_i, hidden_size]]
Constructors take built modules and do no I/O; `build_encoder` does the loading.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from omnilm.config import EncoderConfig
from omnilm.data.images import CLIP_MEAN, CLIP_STD, ImageTransform
from omnilm.errors import ConfigError

VISION_TOWERS = {  # config model_type -> (config class, vision model class)
    "clip": (CLIPVisionConfig, CLIPVisionModel),
    "clip_vision_model": (CLIPVisionConfig, CLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
    "siglip_vision_model": (SiglipVisionConfig, SiglipVisionModel),
}


class VisionTowerEncoder(nn.Module):
    """A Hugging Face CLIP/SigLIP vision tower: patch tokens of one hidden layer."""

    modality = "image"

    def __init__(self, tower: nn.Module, transform: ImageTransform, layer: int = -1, drop_cls: bool = True):
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
        """A folder `name_or_path` can load again: the tower plus its normalization."""
        self.tower.save_pretrained(path)
        stats = {"image_mean": self.transform.mean.flatten().tolist(), "image_std": self.transform.std.flatten().tolist()}
        (Path(path) / "preprocessor_config.json").write_text(json.dumps(stats, indent=2))

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return self.tokens

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        pixels = torch.stack(inputs).to(self.tower.dtype)  # [N, 3, S, S]
        out = self.tower(pixel_values=pixels, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # [N, 1+P, D]
        if self.drop_cls:
            hidden = hidden[:, 1:]  # [N, P, D]
        return list(hidden.unbind(0))


def _vision_tower(cfg: EncoderConfig, seed: int) -> VisionTowerEncoder:
    if cfg.random_config is not None:
        params = dict(cfg.random_config)
        model_type = params.pop("model_type", "clip_vision_model")
        if model_type not in VISION_TOWERS:
            raise ConfigError(f"model.image.random_config.model_type {model_type!r}: use one of {', '.join(VISION_TOWERS)}")
        config_cls, model_cls = VISION_TOWERS[model_type]
        torch.manual_seed(seed)
        tower = model_cls(config_cls(**params))
        mean, std = CLIP_MEAN, CLIP_STD
    else:
        model_type = AutoConfig.from_pretrained(cfg.name_or_path).model_type
        if model_type not in VISION_TOWERS:
            raise ConfigError(f"{cfg.name_or_path} is a {model_type!r} model, not a CLIP/SigLIP vision tower")
        tower = VISION_TOWERS[model_type][1].from_pretrained(cfg.name_or_path)
        mean, std = _processor_stats(cfg.name_or_path)
    size = cfg.image_size or tower.config.image_size
    if size != tower.config.image_size:
        raise ConfigError(f"image_size {size} differs from the tower's {tower.config.image_size}")
    return VisionTowerEncoder(tower, ImageTransform(size, mean, std), cfg.layer, cfg.drop_cls)


def _processor_stats(name_or_path: str):
    """Normalization from preprocessor_config.json when the folder has one, else CLIP's."""
    file = Path(name_or_path) / "preprocessor_config.json"
    if file.is_file():
        data = json.loads(file.read_text())
        return data.get("image_mean", CLIP_MEAN), data.get("image_std", CLIP_STD)
    if not Path(name_or_path).exists():
        from transformers.utils import cached_file

        resolved = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        if resolved:
            return _processor_stats(str(Path(resolved).parent))
    return CLIP_MEAN, CLIP_STD


def _efficientnet(cfg: EncoderConfig, seed: int):
    from omnilm.model.efficientnet_encoder import build_efficientnet_encoder

    return build_efficientnet_encoder(cfg, seed)


def _whisper(cfg: EncoderConfig, seed: int):
    from omnilm.model.whisper_encoder import build_whisper_encoder

    return build_whisper_encoder(cfg, seed)


ENCODERS = {"clip": _vision_tower, "siglip": _vision_tower, "efficientnet_lite0": _efficientnet, "whisper": _whisper}
ENCODER_MODALITY = {"clip": "image", "siglip": "image", "efficientnet_lite0": "image", "whisper": "audio"}


def build_encoder(cfg: EncoderConfig, seed: int = 0) -> nn.Module:
    if cfg.type not in ENCODERS:
        raise ConfigError(f"unknown encoder type {cfg.type!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[cfg.type](cfg, seed)
