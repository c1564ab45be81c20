"""Weight-free media preprocessing, one builder per encoder type (named in its registry entry,
omnilm.core.components.ENCODERS): a recipe's EncoderConfig and the encoder folder's config.json /
preprocessor_config.json -> the transformers part that turns one raw item into encoder input, and
how many feature vectors that input becomes. No weights are read, so a processor exists without them."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, LlavaNextImageProcessorPil, WhisperConfig, WhisperFeatureExtractor
from transformers.utils import cached_file

from omnilm.config import EncoderConfig
from omnilm.data.images import CLIP_MEAN, CLIP_STD
from omnilm.errors import ConfigError
from omnilm.model.audio_features import window_frames
from omnilm.model.image_processing import CenterCropImageProcessor, SplitImageProcessor
from omnilm.model.tiling import Tiling, tiling_of

PREPROCESSOR_FILE = "preprocessor_config.json"
# config model_type -> whether its sequence starts with a CLS token (SigLIP's is patches only)
VISION_TOWER_TYPES = {"clip": True, "clip_vision_model": True, "siglip": False, "siglip_vision_model": False}


@dataclass(frozen=True)
class MediaPreprocessor:
    part: object  # an image processor (ImageProcessingMixin) or a WhisperFeatureExtractor
    image_tokens: int | None = None  # feature vectors each image becomes (images: a fixed count)
    tiling: object | None = None  # omnilm.model.tiling.Tiling: images cut into tiles, counted by their size
    audio_window_frames: int | None = None  # mel frames per encoder window (audio: counted per clip)


def vision_tower_preprocessor(cfg: EncoderConfig) -> MediaPreprocessor:
    """CLIP/SigLIP: the folder's own AutoImageProcessor (PIL backend: no torchvision), or resize,
    centre-crop and normalize with the folder's statistics (CLIP's for a random tower)."""
    config, model_type = _tower_config(cfg)
    size = cfg.image_size or config.image_size
    if size != config.image_size:
        raise ConfigError(f"image_size {size} differs from the tower's {config.image_size}")
    has_cls = VISION_TOWER_TYPES[model_type]
    check_pixel_shuffle(cfg, config, has_cls)
    tokens = (config.image_size // config.patch_size) ** 2 + (has_cls and not cfg.drop_cls)
    saved = {} if cfg.random_config is not None else _preprocessor_config(cfg.name_or_path)
    if "image_processor_type" in saved and saved["image_processor_type"] != CenterCropImageProcessor.__name__:
        part = AutoImageProcessor.from_pretrained(cfg.name_or_path, backend="pil")
    else:  # e.g. a tower omnilm saved from a random_config: normalization statistics only
        part = CenterCropImageProcessor(size, saved.get("image_mean", CLIP_MEAN), saved.get("image_std", CLIP_STD))
    tiling = tiling_of(cfg, size, config.patch_size)
    if tiling is None:
        return MediaPreprocessor(part, image_tokens=tokens)
    if tokens != (size // config.patch_size) ** 2:
        raise ConfigError(f"model.image.tiling {cfg.tiling}: needs drop_cls: true (the tile layout takes patch tokens only)")
    return MediaPreprocessor(tiled_part(tiling, part), image_tokens=tokens, tiling=tiling)


def tiled_part(tiling: Tiling, part):
    """The image processor that cuts an image into `tiling`'s tiles, normalized as `part` does:
    transformers' LLaVA-NeXT one for anyres (its resize and pad), omnilm's for split."""
    mean, std = list(part.image_mean), list(part.image_std)
    if tiling.kind == "split":
        return SplitImageProcessor(tiling.tile_size, tiling.max_tiles, mean, std)
    size = tiling.tile_size
    return LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      image_grid_pinpoints=[list(p) for p in tiling.grid_pinpoints],
                                      image_mean=mean, image_std=std, resample=3)


def check_pixel_shuffle(cfg: EncoderConfig, config, has_cls: bool) -> None:
    """Pixel shuffle merges N x N blocks of the patch grid: the grid must divide by N and hold patches only."""
    n = cfg.projector.pixel_shuffle
    if n == 1:
        return
    grid = config.image_size // config.patch_size
    if grid % n:
        raise ConfigError(f"model.image.projector.pixel_shuffle = {n}: the tower's {grid} x {grid} patch grid "
                          f"(image_size {config.image_size} / patch_size {config.patch_size}) does not divide by {n}")
    if has_cls and not cfg.drop_cls:
        raise ConfigError(f"model.image.projector.pixel_shuffle = {n} needs drop_cls: true (the CLS token is "
                          "not on the patch grid)")


def _tower_config(cfg: EncoderConfig):
    if cfg.random_config is not None:
        params = dict(cfg.random_config)
        model_type = params.pop("model_type", "clip_vision_model")
        if model_type not in VISION_TOWER_TYPES:
            raise ConfigError(f"model.image.random_config.model_type {model_type!r}: use one of "
                              f"{', '.join(VISION_TOWER_TYPES)}")
        return AutoConfig.for_model(model_type, **params), model_type
    config = AutoConfig.from_pretrained(cfg.name_or_path)
    if config.model_type not in VISION_TOWER_TYPES:
        raise ConfigError(f"{cfg.name_or_path} is a {config.model_type!r} model, not a CLIP/SigLIP vision tower")
    vision = getattr(config, "vision_config", config)  # a full CLIP/SigLIP folder: its vision half
    return vision, config.model_type


def _preprocessor_config(name_or_path: str) -> dict:
    """The folder's (or hub repo's) preprocessor_config.json, or {} when it has none."""
    file = Path(name_or_path) / PREPROCESSOR_FILE
    if not file.is_file() and not Path(name_or_path).exists():
        resolved = cached_file(name_or_path, PREPROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
        file = Path(resolved) if resolved else file
    return json.loads(file.read_text()) if file.is_file() else {}


def efficientnet_preprocessor(cfg: EncoderConfig) -> MediaPreprocessor:
    """EfficientNet-Lite0: shortest edge, centre crop, (x - 127) / 128; a grid cell per 32 px, or pool_grid^2."""
    from omnilm.zoo.efficientnet import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, PATCH

    size = cfg.image_size or IMAGE_SIZE
    grid = math.ceil(size / PATCH)
    if cfg.pool_grid is not None and cfg.pool_grid > grid:
        raise ConfigError(f"pool_grid {cfg.pool_grid} is larger than the {grid} x {grid} feature grid at {size} px")
    return MediaPreprocessor(CenterCropImageProcessor(size, IMAGE_MEAN, IMAGE_STD),
                             image_tokens=(cfg.pool_grid or grid) ** 2)


def whisper_preprocessor(cfg: EncoderConfig) -> MediaPreprocessor:
    """Whisper: its feature extractor (the folder's, or one with the config's mel-bin count: it has
    no learned state) and the encoder window the real-length log-mel is cut by."""
    if cfg.random_config is not None:
        config = WhisperConfig(**cfg.random_config)
        return MediaPreprocessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins),
                                 audio_window_frames=window_frames(config.max_source_positions))
    config = WhisperConfig.from_pretrained(cfg.name_or_path)
    folder = Path(cfg.name_or_path)
    if folder.is_dir() and not (folder / PREPROCESSOR_FILE).is_file():  # converted checkpoints often lack it
        extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    else:
        extractor = WhisperFeatureExtractor.from_pretrained(cfg.name_or_path)
    if extractor.feature_size != config.num_mel_bins:
        raise ConfigError(f"{cfg.name_or_path}: the feature extractor makes {extractor.feature_size} mel bins but "
                          f"the encoder expects {config.num_mel_bins}")
    return MediaPreprocessor(extractor, audio_window_frames=window_frames(config.max_source_positions))
