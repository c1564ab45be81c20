"""Reading images safely and turning them into normalized pixel tensors."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from omnilm.errors import MediaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Refuse decompression bombs well before they exhaust memory: a few kB of PNG can declare
# billions of pixels, or a 2,000,000 x 8 strip whose pixel count alone looks harmless.
MAX_PIXELS = 64_000_000
MAX_SIDE = 32_768
# The only formats any image is decoded as (Pillow's format name -> how errors write it). No
# other Pillow plugin is ever asked about a file: EPS would run Ghostscript on client bytes, and
# TIFF, PSD, ICO... are parsers nobody's images need.
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
ACCEPTED_IMAGES = ", ".join(IMAGE_FORMATS.values())


def load_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> Image.Image:
    """Path, bytes or PIL image -> RGB PIL image; unreadable input raises MediaError naming it.

    Only IMAGE_FORMATS are tried, and the size is checked from the header, before any pixel is
    decoded. Pillow gets a file object, never the path, so its messages name no file.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    label = name or (str(source) if isinstance(source, (str, Path)) else "<image bytes>")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise MediaError(f"image not found: {label}")
    try:
        with _opened(source) as fp, Image.open(fp, formats=list(IMAGE_FORMATS)) as img:
            _check_size(img.width, img.height, label, max_pixels, max_side)
            return img.convert("RGB")
    except UnidentifiedImageError:
        # Pillow's own text here is "cannot identify image file <_io.BytesIO object at 0x...>".
        raise MediaError(f"cannot read image {label}: not an image in an accepted format "
                         f"(accepted: {ACCEPTED_IMAGES})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"cannot read image {label}: {err}") from None


def _opened(source) -> contextlib.AbstractContextManager[BinaryIO]:
    """A file object for Pillow: bytes wrapped, a path opened here, a file object as it is."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, (str, Path)):
        return open(source, "rb")
    return contextlib.nullcontext(source)


def _check_size(width: int, height: int, label: str, max_pixels: int, max_side: int) -> None:
    if max(width, height) > max_side:
        raise MediaError(f"image too large: {label} is {width}x{height}; the limit is {max_side} pixels a side")
    if width * height > max_pixels:
        raise MediaError(f"image too large: {label} is {width}x{height} = {width * height} pixels; "
                         f"the limit is {max_pixels}")


class ImageTransform:
    """Resize the shortest edge, centre-crop to a square, scale to [0, 1], normalize."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        scale = self.size / min(w, h)
        resized_w, resized_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        left, top = (resized_w - self.size) // 2, (resized_h - self.size) // 2
        # Resize only the centre square that is kept (its box in source pixels): resize-then-crop's
        # pixels (within one level of 255; bit-identical for square images) without building the
        # whole resized image, which for a 16000 x 8 strip would be 448000 x 224.
        sx, sy = w / resized_w, h / resized_h
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        image = image.resize((self.size, self.size), Image.BICUBIC, box=box)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
        return (pixels - self.mean) / self.std
