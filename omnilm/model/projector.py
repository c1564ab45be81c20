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


class Expand(nn.Module):
    """Several LLM tokens from each feature vector: [N, d_in] -> [N * k, d_out]. A pooled image
    vector gives the LLM k separate slots to read (e.g. colour in one, shape in another)."""

    def __init__(self, inner: nn.Module, d_out: int):
        super().__init__()
        self.inner, self.d_out = inner, d_out

    def forward(self, x):  # [N, d_in]
        return self.inner(x).reshape(-1, self.d_out)  # [N * k, d_out]


def build_projector(kind: str, d_in: int, d_out: int, hidden: int | None = None, tokens: int = 1) -> nn.Module:
    if kind not in PROJECTORS:
        raise ConfigError(f"unknown projector type {kind!r}; choose one of {', '.join(PROJECTORS)}")
    if tokens < 1:
        raise ConfigError(f"projector tokens_per_feature must be at least 1, got {tokens}")
    if tokens == 1:
        return PROJECTORS[kind](d_in, d_out, hidden)
    return Expand(PROJECTORS[kind](d_in, d_out * tokens, hidden), d_out)
