"""omnilm's own image preprocessing as a transformers image processor, so it is saved and loaded
with the OmniProcessor like CLIP's or SigLIP's: EfficientNet-Lite0, and vision towers whose folder
has normalization statistics only (a tower materialized from a random_config), and tiling `split`."""
from __future__ import annotations

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin

from omnilm.data.images import CLIP_MEAN, CLIP_STD, ImageTransform


class CenterCropImageProcessor(ImageProcessingMixin):
    """Shortest edge to `size`, centre crop to a square, scale to [0, 1], (x - mean) / std
    (omnilm.data.images.ImageTransform): its settings are all it saves."""

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 224, image_mean=CLIP_MEAN, image_std=CLIP_STD, **kwargs):
        kwargs.pop("image_processor_type", None)  # written by to_dict, names this class
        super().__init__(**kwargs)
        self.size, self.image_mean, self.image_std = int(size), list(image_mean), list(image_std)

    def __call__(self, images, return_tensors: str = "pt") -> BatchFeature:
        transform = ImageTransform(self.size, self.image_mean, self.image_std)
        images = images if isinstance(images, (list, tuple)) else [images]
        return BatchFeature({"pixel_values": torch.stack([transform(image) for image in images])})  # [N, 3, S, S]


class SplitImageProcessor(ImageProcessingMixin):
    """Tiling `split` (omnilm.model.tiling): the image resized to its grid of `size` px tiles, the
    tiles in reading order, then the whole image resized to one tile (the global view), each
    normalized: pixel_values [1, n, 3, S, S]."""

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 224, max_tiles: int = 4, image_mean=CLIP_MEAN, image_std=CLIP_STD, **kwargs):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.size, self.max_tiles = int(size), int(max_tiles)
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def __call__(self, images, return_tensors: str = "pt") -> BatchFeature:
        from omnilm.model.tiling import Tiling, split_grid

        tiling = Tiling("split", self.size, 1, max_tiles=self.max_tiles)  # the grid depends on sizes only, not on side
        transform = ImageTransform(self.size, self.image_mean, self.image_std)
        stacks = []
        for image in images if isinstance(images, (list, tuple)) else [images]:
            image = image.convert("RGB")
            grid = split_grid(tiling, image.height, image.width)
            tiles = []
            if grid.rows:  # 0 x 0: the image fits one tile, the global view alone
                resized = image.resize((grid.cols * self.size, grid.rows * self.size), Image.Resampling.BICUBIC)
                tiles = [resized.crop((c * self.size, r * self.size, (c + 1) * self.size, (r + 1) * self.size))
                         for r in range(grid.rows) for c in range(grid.cols)]
            views = [*tiles, image.resize((self.size, self.size), Image.Resampling.BICUBIC)]
            stacks.append(torch.stack([transform(view) for view in views]))  # [n, 3, S, S]
        return BatchFeature({"pixel_values": stacks})
