"""The encoder registry: one entry per encoder type, with every fact the rest of omnilm needs.

Recipe validation (omnilm.config), the model checks (omnilm.model.checks), the builder
(omnilm.model.build) and the processor (omnilm.model.processing) all read these entries, so a
fact is written once. This module imports nothing of omnilm but its errors: an entry names its
encoder builder and its weight-free preprocessor builder as "module:function", imported on use.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

from omnilm.errors import ConfigError


@dataclass(frozen=True)
class EncoderSpec:
    modality: str  # the recipe slot it fills: model.image or model.audio
    preprocessing: str  # what the processor does to one raw item before the encoder
    tokens: str  # how many LLM tokens one input becomes (feature vectors, then the projector)
    needs_weights: bool  # without name_or_path or random_config there is nothing to load
    builder: str  # "module:function" taking (EncoderConfig, seed) and returning the built encoder
    preprocessor: str  # "module:function" taking an EncoderConfig and returning its MediaPreprocessor, weight-free
    options: tuple[str, ...] = ()  # EncoderConfig keys that only this type reads
    fixed_architecture: bool = False  # random_config must be {}: there is no size to choose
    patch_grid: bool = False  # features are a square patch grid, so projector.pixel_shuffle can merge them

    def stack(self, cfg) -> int:
        """Encoder frames the projector stacks into one input vector (1: none)."""
        return cfg.stack_frames if "stack_frames" in self.options else 1

    def build(self, cfg, seed: int = 0):
        return _resolve(self.builder)(cfg, seed)

    def build_preprocessor(self, cfg):
        return _resolve(self.preprocessor)(cfg)


def _resolve(name: str):
    """"module:function" -> the function, imported now."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


_TOWER = "omnilm.model.encoders:build_vision_tower"
_TOWER_PREPROCESSOR = "omnilm.model.preprocessors:vision_tower_preprocessor"

ENCODERS = {
    "clip": EncoderSpec(
        "image", "the folder's AutoImageProcessor (CLIP: shortest edge to image_size, centre crop, normalize)",
        "(image_size / patch_size)^2 patch tokens, +1 with drop_cls: false", True, _TOWER, _TOWER_PREPROCESSOR,
        options=("layer", "drop_cls", "image_size", "tiling", "grid_pinpoints", "max_tiles"), patch_grid=True),
    "siglip": EncoderSpec(
        "image", "the folder's AutoImageProcessor (SigLIP: resize to image_size x image_size, no crop)",
        "(image_size / patch_size)^2 patch tokens (SigLIP has no CLS token)", True, _TOWER, _TOWER_PREPROCESSOR,
        options=("layer", "image_size", "tiling", "grid_pinpoints", "max_tiles"), patch_grid=True),
    "efficientnet_lite0": EncoderSpec(
        "image", "shortest edge to image_size, centre crop, (x - 127) / 128 per channel",
        "ceil(image_size / 32)^2 grid cells, or pool_grid^2", False,
        "omnilm.model.efficientnet_encoder:build_efficientnet_encoder",
        "omnilm.model.preprocessors:efficientnet_preprocessor",
        options=("image_size", "pool_grid"), fixed_architecture=True),
    "whisper": EncoderSpec(
        "audio", "16 kHz mono -> log-mel at the real length in 30-s windows (pad_to_window: whole windows)",
        "one encoder frame per 20 ms; the projector stacks stack_frames of them into one token", True,
        "omnilm.model.whisper_encoder:build_whisper_encoder", "omnilm.model.preprocessors:whisper_preprocessor",
        options=("stack_frames", "max_seconds", "pad_to_window")),
}


def encoder_spec(type_: str, where: str) -> EncoderSpec:
    """The registry entry for `type_`; `where` (e.g. "model.image.type") names the key on error."""
    if type_ not in ENCODERS:
        choices = ", ".join(f"{name} ({spec.modality})" for name, spec in ENCODERS.items())
        raise ConfigError(f"{where} {type_!r}: not an encoder type; choose one of {choices}")
    return ENCODERS[type_]


def llm_tokens(features: int, stack: int = 1, tokens_per_feature: int = 1, pixel_shuffle: int = 1) -> int:
    """How many LLM tokens `features` encoder feature vectors of one item become: what the
    projector makes of them (stack k frames into one vector, merge N x N patches into one vector,
    expand each vector to t tokens). The patch grid divides by N (checked when the processor is built)."""
    return math.ceil(features / stack) // pixel_shuffle**2 * tokens_per_feature
