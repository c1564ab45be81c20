"""Image tiling for CLIP/SigLIP towers (`model.image.tiling`): how an image is cut into tower-sized
tiles, how many LLM tokens it then becomes (from its size alone, never by running the encoder),
and how the model lays the tiles' features out in that many positions.

anyres: LLaVA-NeXT's. A grid of tiles chosen from `grid_pinpoints` by the image's size
(transformers' select_best_resolution), the image resized into it keeping its aspect ratio and
padded, plus an overview resized to one tile. Tokens: the overview's patches, then the tiles'
patches as one feature grid with the padding's rows (or columns) cut off and a learned newline
after each row, following transformers' LlavaNextProcessor._get_number_of_features and
LlavaNextModel.pack_image_features, so an export is a LlavaNextForConditionalGeneration.

split: nanoVLM / Idefics3 style. The image resized to rows x cols tiles (ceil of its sides over
the tile size, the larger count lowered until rows x cols <= max_tiles), tiles in reading order,
then the whole image resized to one tile as a global view; a learned marker before each tile
(one per row and column position) and one before the global view. A single-tile grid is the
global view alone.

`side` below is the side of the feature grid each tile gives the LLM: image_size / patch_size, over
N with `projector.pixel_shuffle: N` (which merges N x N neighbouring features within each tile).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.image_processing_utils import select_best_resolution

from omnilm.core.tiles import TileFeatures, TileGrid, Tiles
from omnilm.errors import ConfigError
from omnilm.model.projector import project

__all__ = ["Tiling", "TileGrid", "Tiles", "TileFeatures", "TileLayout", "TiledProjector", "tiling_of", "grid_of",
           "token_count", "max_tokens", "most_tiles"]

DEFAULT_MAX_TILES = 4
ANYRES_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # LLaVA-NeXT's default pinpoints, in tiles


@dataclass(frozen=True)
class Tiling:
    """An image encoder's tiling settings, as the processor saves them."""

    kind: str  # anyres or split
    tile_size: int  # pixels per tile side: the tower's image_size
    side: int  # features per tile side
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # anyres: [height, width] in pixels
    max_tiles: int = DEFAULT_MAX_TILES  # split

    @classmethod
    def from_dict(cls, settings: dict) -> "Tiling":
        points = tuple(tuple(p) for p in settings.get("grid_pinpoints") or ())
        return cls(**{**settings, "grid_pinpoints": points})

    def as_dict(self) -> dict:
        return {**asdict(self), "grid_pinpoints": [list(p) for p in self.grid_pinpoints]}


def tiling_of(cfg, tile_size: int, patch_size: int) -> Tiling | None:
    """An EncoderConfig's tiling for a tower of `tile_size` px and `patch_size` px patches (None: no tiling)."""
    if cfg.tiling == "none":
        return None
    side = tile_size // patch_size // cfg.projector.pixel_shuffle  # the features each tile gives the LLM, a side
    if cfg.tiling == "split":
        return Tiling("split", tile_size, side, max_tiles=cfg.max_tiles or DEFAULT_MAX_TILES)
    points = cfg.grid_pinpoints or [[r * tile_size, c * tile_size] for r, c in ANYRES_GRIDS]
    for i, (height, width) in enumerate(points):
        if height % tile_size or width % tile_size:
            raise ConfigError(f"model.image.grid_pinpoints[{i}] = {[height, width]}: each side must be a "
                              f"multiple of the tower's image size {tile_size}")
    return Tiling("anyres", tile_size, side, grid_pinpoints=tuple(tuple(p) for p in points))


def grid_of(tiling: Tiling, height: int, width: int) -> TileGrid:
    """The tiles of an image `height` x `width` px."""
    return anyres_grid(tiling, height, width) if tiling.kind == "anyres" else split_grid(tiling, height, width)


def anyres_grid(tiling: Tiling, height: int, width: int) -> TileGrid:
    best_height, best_width = select_best_resolution([height, width], [list(p) for p in tiling.grid_pinpoints])
    rows, cols = best_height // tiling.tile_size, best_width // tiling.tile_size
    grid_height, grid_width = rows * tiling.side, cols * tiling.side
    # The resized image fills the grid along one side and is padded equally on the other (LLaVA-NeXT's arithmetic).
    if width / height > grid_width / grid_height:
        padding = (grid_height - int(round(height * (grid_width / width), 7))) // 2
        return TileGrid(rows, cols, padding, grid_height - 2 * padding, 0, grid_width)
    padding = (grid_width - int(round(width * (grid_height / height), 7))) // 2
    return TileGrid(rows, cols, 0, grid_height, padding, grid_width - 2 * padding)


def split_grid(tiling: Tiling, height: int, width: int) -> TileGrid:
    rows, cols = math.ceil(height / tiling.tile_size), math.ceil(width / tiling.tile_size)
    while rows * cols > tiling.max_tiles:
        if rows > cols:
            rows -= 1
        else:
            cols -= 1
    return TileGrid(0, 0) if rows * cols == 1 else TileGrid(rows, cols)


def token_count(tiling: Tiling, grid: TileGrid) -> int:
    """LLM tokens of one image with this grid."""
    per_tile = tiling.side**2
    if tiling.kind == "anyres":
        return per_tile + grid.kept_rows * (grid.kept_cols + 1)  # overview, then each row and its newline
    return (grid.rows * grid.cols + 1) * (per_tile + 1)  # a marker before each tile and the global view


def max_tokens(tiling: Tiling) -> int:
    """The most LLM tokens any image can become: the largest grid, unpadded."""
    if tiling.kind == "split":
        return (tiling.max_tiles + 1) * (tiling.side**2 + 1)
    grids = [(h // tiling.tile_size * tiling.side, w // tiling.tile_size * tiling.side) for h, w in tiling.grid_pinpoints]
    return tiling.side**2 + max(rows * (cols + 1) for rows, cols in grids)


def most_tiles(tiling: Tiling) -> int:
    """The most tower inputs any image can become, the overview or global view included."""
    if tiling.kind == "split":
        return tiling.max_tiles + 1
    return 1 + max(h * w // tiling.tile_size**2 for h, w in tiling.grid_pinpoints)


class TileLayout(nn.Module):
    """Projected tile features of one image -> its LLM tokens in the order token_count counts,
    with the learned newline (anyres) or markers (split) in their places."""

    def __init__(self, tiling: Tiling, d_llm: int):
        super().__init__()
        self.tiling = tiling
        scale = d_llm**-0.5  # LLaVA-NeXT's initialization of its newline
        if tiling.kind == "anyres":
            self.image_newline = nn.Parameter(torch.randn(d_llm) * scale)
        else:  # one marker per (row, column) a grid of max_tiles can have, and the global view's last
            self.markers = nn.Parameter(torch.randn(tiling.max_tiles**2 + 1, d_llm) * scale)

    def forward(self, tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:  # [n * side^2, D]
        side = self.tiling.side
        tiles = tiles.reshape(-1, side, side, tiles.shape[-1])  # [n, side, side, D]
        if self.tiling.kind == "anyres":
            return self._anyres(tiles, grid)
        return self._split(tiles, grid)

    def _anyres(self, tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:
        base, rest = tiles[0].flatten(0, 1), tiles[1:]  # [side^2, D], [rows * cols, side, side, D]
        if grid.rows * grid.cols != rest.shape[0]:
            raise ValueError(f"{rest.shape[0]} tiles for a {grid.rows} x {grid.cols} grid")
        side, dim = self.tiling.side, tiles.shape[-1]
        joined = rest.reshape(grid.rows, grid.cols, side, side, dim).permute(0, 2, 1, 3, 4)
        joined = joined.reshape(grid.rows * side, grid.cols * side, dim)  # [H, W, D] of the whole grid
        kept = joined[grid.top:grid.top + grid.kept_rows, grid.left:grid.left + grid.kept_cols]  # [h, w, D]
        newline = self.image_newline.to(kept.dtype).expand(grid.kept_rows, 1, dim)  # [h, 1, D]
        return torch.cat([base, torch.cat([kept, newline], dim=1).flatten(0, 1)])  # [side^2 + h * (w + 1), D]

    def _split(self, tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:
        markers = self.markers.to(tiles.dtype)
        limit = self.tiling.max_tiles
        positions = [r * limit + c for r in range(grid.rows) for c in range(grid.cols)] + [limit**2]
        if len(positions) != tiles.shape[0]:
            raise ValueError(f"{tiles.shape[0]} tiles for a {grid.rows} x {grid.cols} grid and a global view")
        parts = [torch.cat([markers[p][None], tile.flatten(0, 1)]) for p, tile in zip(positions, tiles)]
        return torch.cat(parts)  # [(n) * (side^2 + 1), D]


class TiledProjector(nn.Module):
    """The image projector of a tiled model: the projector per feature, then each image's layout."""

    def __init__(self, inner: nn.Module, layout: TileLayout):
        super().__init__()
        self.inner, self.layout = inner, layout

    def forward(self, features: list[torch.Tensor], grids: list[TileGrid]) -> torch.Tensor:
        """features: each image's views [n_i, P, d_in] -> [sum tokens_i, d_llm]. Each view is its own
        item for the projector (a pixel shuffle merges blocks within one tile's grid)."""
        projected = project(self.inner, [view for image in features for view in image])  # [sum n_i * side^2, D]
        per_image = projected.split([len(image) * self.layout.tiling.side**2 for image in features])
        return torch.cat([self.layout(p, g) for p, g in zip(per_image, grids)])
