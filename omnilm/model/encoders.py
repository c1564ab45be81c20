"""Frozen media encoders behind one small contract; the CLIP/SigLIP vision towers.

An encoder exposes:
  modality      "image" or "audio"
  hidden_size   width of each output feature vector
  forward(list[Tensor]) -> list[Tensor [T_i, hidden_size]]
What its input is (a raw item's preprocessing) and how many vectors it becomes is the processor's,
weight-free (omnilm.model.preprocessors). Constructors take built modules and do no I/O;
`build_encoder` does the loading, through the type's entry in omnilm.core.components.ENCODERS.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, PreTrainedModel, SiglipVisionConfig, SiglipVisionModel

from omnilm.config import EncoderConfig
from omnilm.core.components import encoder_spec
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

    def __init__(self, tower: nn.Module, layer: int = -1, drop_cls: bool = True):
        super().__init__()
        self.tower = tower
        self.layer = layer
        # SigLIP has no CLS token: its sequence is patches only.
        self.drop_cls = drop_cls and isinstance(tower, CLIPVisionModel)
        self.hidden_size = tower.config.hidden_size

    def save_pretrained(self, path) -> None:
        """The tower, a folder `name_or_path` can load again (the processor saves its preprocessing)."""
        self.tower.save_pretrained(path)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        pixels = torch.stack(inputs).to(self.tower.dtype)  # [N, 3, S, S]
        out = self.tower(pixel_values=pixels, output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # [N, 1+P, D]
        if self.drop_cls:
            hidden = hidden[:, 1:]  # [N, P, D]
        return list(hidden.unbind(0))


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
    return VisionTowerEncoder(tower, cfg.layer, cfg.drop_cls)


def build_encoder(cfg: EncoderConfig, seed: int = 0) -> nn.Module:
    return encoder_spec(cfg.type, "encoder type").build(cfg, seed)


def encoder_config_of(encoder: nn.Module):
    """The transformers config of the model inside an encoder (a vision tower's, Whisper's), or
    None for an encoder that has none (EfficientNet-Lite0)."""
    inner = next((m for m in encoder.children() if isinstance(m, PreTrainedModel)), None)
    return inner.config if inner is not None else None
