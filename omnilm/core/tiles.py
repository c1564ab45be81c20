"""A tiled image on its way from the processor to the model (`model.image.tiling`): what every
layer passes along without knowing how tiles are cut or counted (omnilm.model.tiling does)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileGrid:
    """One image's tiles: `rows` x `cols` of them (0 x 0: the global view alone) and, for anyres,
    the window of the joined feature grid that is the image rather than its padding."""

    rows: int
    cols: int
    top: int = 0
    kept_rows: int = 0
    left: int = 0
    kept_cols: int = 0

    @property
    def views(self) -> int:
        """Tower inputs: the tiles and the overview / global view."""
        return self.rows * self.cols + 1


@dataclass
class Tiles:
    """One tiled image as encoder input: its views' pixels [n, 3, S, S] (anyres: overview first;
    split: global view last) and its grid. Moves between devices as a tensor does in a Batch."""

    pixels: object  # torch.Tensor
    grid: TileGrid

    def to(self, *args, **kwargs) -> "Tiles":
        return Tiles(self.pixels.to(*args, **kwargs), self.grid)


@dataclass
class TileFeatures:
    """One tiled image's encoder features [n, P, D], one row per view (from a feature cache), and its grid."""

    features: object  # torch.Tensor
    grid: TileGrid

    def to(self, *args, **kwargs) -> "TileFeatures":
        return TileFeatures(self.features.to(*args, **kwargs), self.grid)
