"""Projectors: map encoder features [N, d_enc] into the LLM's embedding space [N, d_llm]."""
from __future__ import annotations

from torch import nn

from omnilm.errors import ConfigError


class ResBlockProjector(nn.Module):
    """The seed's projector: Linear into the LLM width, then a pre-norm residual MLP block."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out)
        self.mlp = nn.Sequential(nn.Linear(d_out, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, x):  # [N, d_in]
        x = self.norm(self.proj(x))  # [N, d_out]
        return x + self.mlp(x)


def mlp2x_gelu(d_in: int, d_out: int, hidden: int | None = None) -> nn.Module:
    """LLaVA-1.5's projector: two linear layers with a GELU between."""
    return nn.Sequential(nn.Linear(d_in, hidden or d_out), nn.GELU(), nn.Linear(hidden or d_out, d_out))


def linear(d_in: int, d_out: int, hidden: int | None = None) -> nn.Module:
    return nn.Linear(d_in, d_out)


PROJECTORS = {"resblock": ResBlockProjector, "mlp2x_gelu": mlp2x_gelu, "mlp": mlp2x_gelu, "linear": linear}


def build_projector(kind: str, d_in: int, d_out: int, hidden: int | None = None) -> nn.Module:
    if kind not in PROJECTORS:
        raise ConfigError(f"unknown projector type {kind!r}; choose one of {', '.join(PROJECTORS)}")
    return PROJECTORS[kind](d_in, d_out, hidden)
