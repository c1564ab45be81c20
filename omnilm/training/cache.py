"""`omnilm cache-features`: the frozen image encoder run once over a data set."""
from __future__ import annotations

import torch

from omnilm.config import Recipe
from omnilm.data.feature_cache import build_feature_cache, encoder_identity
from omnilm.data.sources import load_samples
from omnilm.errors import ConfigError
from omnilm.model.build import build_processor, resolve_dtype
from omnilm.model.encoders import build_encoder
from omnilm.model.tiling import most_tiles


def cache_features(recipe: Recipe, out: str | None = None, batch_size: int = 32, progress: bool = True,
                   images: list | None = None):
    """Features of the recipe's training images (or of `images`) with the recipe's encoder."""
    enc_cfg = recipe.model.image
    if enc_cfg is None:
        raise ConfigError("cache-features needs model.image in the recipe")
    folder = out or recipe.data.feature_cache
    if not folder:
        raise ConfigError("give --out or set data.feature_cache in the recipe")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Same seed and builder as training, so a random tiny encoder yields the same features.
    encoder = build_encoder(enc_cfg, recipe.model.seed)
    encoder.to(device=device, dtype=resolve_dtype(recipe.model.llm.dtype, device)).eval()
    if images is None:
        images = [path for sample in load_samples(recipe.data).samples for path in sample.images]
    processor = build_processor(recipe)  # the image preprocessing training uses

    def prepare(item):
        return processor.preprocess("image", processor.read("image", item))  # [3, S, S], or a tiled image's Tiles

    tiling = processor.image_tiling
    return build_feature_cache(encoder, images, folder, encoder_identity(enc_cfg), prepare,
                               batch_size=batch_size, skip_bad=recipe.data.skip_bad, progress=progress,
                               max_views=most_tiles(tiling) if tiling is not None else 1)
