"""Reading images safely and turning them into normalized pixel tensors."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from omnilm.errors import MediaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 64_000_000  # refuse decompression bombs well before they exhaust memory


def load_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Path, bytes or PIL image -> RGB PIL image; unreadable input raises MediaError naming it."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    label = name or (str(source) if isinstance(source, (str, Path)) else "<image bytes>")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise MediaError(f"image not found: {label}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.width * img.height > max_pixels:
                raise MediaError(f"image too large: {label} is {img.width}x{img.height}, limit {max_pixels} pixels")
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"cannot read image {label}: {err}") from None


class ImageTransform:
    """Resize the shortest edge, centre-crop to a square, scale to [0, 1], normalize."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        scale = self.size / min(w, h)
        image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
        left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
        return (pixels - self.mean) / self.std
