"""omnilm's own image preprocessing as a transformers image processor, so it is saved and loaded
with the OmniProcessor like CLIP's or SigLIP's: EfficientNet-Lite0, and vision towers whose folder
has normalization statistics only (a tower materialized from a random_config)."""
from __future__ import annotations

import torch
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
