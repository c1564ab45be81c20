"""Precomputed features of a frozen encoder, so training skips running it every step.

Layout of a cache folder: features.npy ([N, T, D] float16, memory-mapped), index.json
(item key -> row), meta.json (which encoder made them, tiling settings included; a mismatch is
refused, not ignored). A tiling encoder's cache has a row per view (tile, overview or global
view), index.json points at an image's first, and grids.json holds each image's TileGrid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omnilm.core.tiles import TileFeatures, TileGrid, Tiles
from omnilm.data.rows import LOGGED_SKIPS
from omnilm.errors import ConfigError, DataError, OmniError
from omnilm.files import atomic_folder, recover

log = logging.getLogger(__name__)


def media_key(item) -> str:
    """An image's key in a cache: its path, or for image bytes (data.source hf) their hash,
    which names the same image the same way whatever order the stream brings it in."""
    if isinstance(item, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(item).hexdigest()
    return str(item)


class FeatureCache:
    def __init__(self, folder: Path, features: np.ndarray, index: dict[str, int], meta: dict,
                 grids: dict[str, list[int]] | None = None):
        self.folder, self.features, self.index, self.meta = folder, features, index, meta
        self.grids = grids  # tiled: item key -> its TileGrid's fields

    @classmethod
    def open(cls, folder, expected_meta: dict | None = None) -> "FeatureCache":
        folder = Path(folder)
        recover(folder)  # a rebuild killed while swapping the new cache in
        if not (folder / "meta.json").is_file():
            raise OmniError(f"{folder} is not a feature cache; create it with `omnilm cache-features`")
        meta = json.loads((folder / "meta.json").read_text())
        if expected_meta is not None and meta.get("encoder") != expected_meta:
            raise OmniError(
                f"feature cache {folder} was made by encoder {meta.get('encoder')}, but the recipe's encoder is "
                f"{expected_meta}; rebuild it with `omnilm cache-features`"
            )
        index = json.loads((folder / "index.json").read_text())
        grids = json.loads((folder / "grids.json").read_text()) if (folder / "grids.json").is_file() else None
        return cls(folder, np.load(folder / "features.npy", mmap_mode="r"), index, meta, grids)

    def get(self, key: str) -> torch.Tensor | TileFeatures:
        row = self.index.get(str(key))
        if row is None:
            raise DataError(f"{key} is not in the feature cache {self.folder}; rebuild it with `omnilm cache-features`")
        if self.grids is None:
            return torch.from_numpy(np.array(self.features[row]))  # [T, D] float16
        grid = TileGrid(*self.grids[str(key)])
        return TileFeatures(torch.from_numpy(np.array(self.features[row:row + grid.views])), grid)  # [n, T, D]

    def __len__(self) -> int:
        return len(self.index)


@torch.no_grad()
def build_feature_cache(encoder, items: list[str], folder, encoder_meta: dict, prepare, batch_size: int = 32,
                        skip_bad: bool = False, progress: bool = True, max_views: int = 1) -> FeatureCache:
    """Encode each distinct item once; written to a temporary folder and renamed when complete.
    `prepare(item)` reads and preprocesses one item into the encoder's input (the processor's job):
    a tensor, or a tiled image's Tiles of at most `max_views` views, each cached in a row of its own."""
    folder = Path(folder)
    by_key = {media_key(i): i for i in items}
    keys = list(by_key)
    with atomic_folder(folder) as tmp:
        _write_cache(encoder, by_key, keys, tmp, encoder_meta, prepare, batch_size, skip_bad, progress, max_views)
    return FeatureCache.open(folder)


def _views(prepared) -> tuple[list, TileGrid | None]:
    """One prepared item's encoder inputs, and its grid when tiled."""
    return (list(prepared.pixels), prepared.grid) if isinstance(prepared, Tiles) else ([prepared], None)


def _write_cache(encoder, by_key: dict, keys: list[str], tmp: Path, encoder_meta: dict, prepare, batch_size: int,
                 skip_bad: bool, progress: bool, max_views: int) -> None:
    device = next(encoder.parameters()).device
    probe = _probe(encoder, by_key, prepare, device, skip_bad)  # [T, D]
    out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                    shape=(len(keys) * max_views, *probe.shape))
    index: dict[str, int] = {}
    grids: dict[str, list[int]] = {}
    rows = skipped = 0
    bar = tqdm(total=len(keys), desc="caching features", unit="img", disable=not progress)
    for start in range(0, len(keys), batch_size):
        inputs, names = [], []
        for key in keys[start:start + batch_size]:
            try:
                views, grid = _views(prepare(by_key[key]))
            except DataError as err:
                if not skip_bad:
                    raise
                skipped += 1
                if skipped <= LOGGED_SKIPS:
                    log.warning("not cached: %s", err)  # the error names the file
                continue
            inputs.extend(view.to(device) for view in views)
            names.append((key, len(views), grid))
        features = iter(encoder(inputs) if inputs else ())
        for key, count, grid in names:
            index[key] = rows
            if grid is not None:
                grids[key] = list(dataclasses.astuple(grid))
            for _ in range(count):
                out[rows] = next(features).float().cpu().numpy()
                rows += 1
        bar.update(len(keys[start:start + batch_size]))
    bar.close()
    if skipped:
        log.warning("%d of %d images were unreadable and not cached (data.skip_bad=true)", skipped, len(keys))
    out.flush()
    del out
    if rows < len(keys) * max_views:  # keep the file dense: rows beyond the last written one are unused
        _truncate(tmp / "features.npy", rows)
    (tmp / "index.json").write_text(json.dumps(index))
    if grids:
        (tmp / "grids.json").write_text(json.dumps(grids))
    (tmp / "meta.json").write_text(json.dumps({"encoder": encoder_meta, "count": len(index), "skipped": skipped,
                                               "shape": list(probe.shape)}, indent=2))


def _probe(encoder, by_key: dict, prepare, device, skip_bad: bool) -> torch.Tensor:
    """The features of the first readable item, which fix the cache's shape (the main pass
    counts and names the unreadable ones)."""
    for item in by_key.values():
        try:
            return encoder([_views(prepare(item))[0][0].to(device)])[0]
        except DataError:
            if not skip_bad:
                raise
    raise DataError(f"none of the {len(by_key)} items could be read; nothing to cache")


def _truncate(path: Path, rows: int) -> None:
    data = np.load(path, mmap_mode="r")
    kept = np.array(data[:rows])
    del data
    np.save(path, kept)


def encoder_identity(enc_cfg) -> dict:
    """What decides the features: a cache made by anything else is stale."""
    return {"type": enc_cfg.type, "name_or_path": enc_cfg.name_or_path, "random_config": enc_cfg.random_config,
            "layer": enc_cfg.layer, "drop_cls": enc_cfg.drop_cls, "image_size": enc_cfg.image_size,
            **({"pool_grid": enc_cfg.pool_grid} if enc_cfg.pool_grid else {}),  # old caches stay valid
            **({"tiling": enc_cfg.tiling, "grid_pinpoints": enc_cfg.grid_pinpoints, "max_tiles": enc_cfg.max_tiles}
               if enc_cfg.tiling != "none" else {})}


def open_recipe_cache(recipe) -> FeatureCache | None:
    """The cache a recipe reads image features from instead of its images (None: it reads images)."""
    if not recipe.data.feature_cache:
        return None
    if recipe.model.image is None:
        raise ConfigError("data.feature_cache is set but the model has no image encoder")
    return FeatureCache.open(recipe.data.feature_cache, encoder_identity(recipe.model.image))
