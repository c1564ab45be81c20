"""Projectors: map encoder features [N, d_enc] into the LLM's embedding space [N, d_llm]."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omnilm.errors import ConfigError, PlaceholderMismatch


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


# ggml_rms_norm's epsilon in llama.cpp's Ultravox graph (tools/mtmd/models/whisper-enc.cpp), and Ultravox's own.
ULTRAVOX_NORM_EPS = 1e-6


class UltravoxProjector(nn.Module):
    """Ultravox's audio projector (fixie-ai's UltravoxProjector; llama.cpp's `ultravox` mmproj runs
    the same graph): RMSNorm -> Linear -> SwiGLU -> RMSNorm -> Linear, no biases anywhere (llama.cpp
    loads none). The SwiGLU splits linear_1's output in halves [x, gate] and returns x * silu(gate):
    the SECOND half is gated, as Ultravox's SwiGLU does and as llama.cpp's ggml_swiglu_swapped
    computes, so weights trained here mean the same there. `hidden` (default twice the LLM width)
    is linear_1's width; the SwiGLU halves it."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * d_out
        if hidden % 2:
            raise ConfigError(f"projector hidden_size must be even for the ultravox projector "
                              f"(its SwiGLU halves it), got {hidden}; try {hidden + 1}")
        self.ln_pre = nn.RMSNorm(d_in, eps=ULTRAVOX_NORM_EPS)
        self.linear_1 = nn.Linear(d_in, hidden, bias=False)
        self.ln_mid = nn.RMSNorm(hidden // 2, eps=ULTRAVOX_NORM_EPS)
        self.linear_2 = nn.Linear(hidden // 2, d_out, bias=False)

    def forward(self, x):  # [N, d_in]
        x, gate = self.linear_1(self.ln_pre(x)).chunk(2, dim=-1)  # 2 x [N, hidden / 2]
        return self.linear_2(self.ln_mid(x * F.silu(gate)))  # [N, d_out]


PROJECTORS = {"resblock": ResBlockProjector, "mlp2x_gelu": mlp2x_gelu, "mlp": mlp2x_gelu, "linear": linear,
              "ultravox": UltravoxProjector}


class Expand(nn.Module):
    """Several LLM tokens from each feature vector: [N, d_in] -> [N * k, d_out]. A pooled image
    vector gives the LLM k separate slots to read (e.g. colour in one, shape in another)."""

    def __init__(self, inner: nn.Module, d_out: int):
        super().__init__()
        self.inner, self.d_out = inner, d_out

    def forward(self, x):  # [N, d_in]
        return self.inner(x).reshape(-1, self.d_out)  # [N * k, d_out]


def stack_frames(frames: torch.Tensor, k: int) -> torch.Tensor:
    """[T, D] -> [ceil(T / k), D * k]: k consecutive frames side by side, the tail zero-padded."""
    frames = F.pad(frames, (0, 0, 0, -frames.shape[0] % k))  # [T', D]
    return frames.reshape(-1, frames.shape[1] * k)  # [T' / k, D * k]


class FrameStack(nn.Module):
    """Audio (Ultravox-style): k consecutive encoder frames become one LLM token, so a 10 s clip
    (500 Whisper frames) costs ceil(500 / k) tokens. Takes each clip's frames apart, since each
    clip's tail is padded on its own: list of [T_i, d_in] -> [sum ceil(T_i / k), d_out]."""

    def __init__(self, inner: nn.Module, k: int):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.inner(torch.cat([stack_frames(f, self.k) for f in features]))


def pixel_shuffle(patches: torch.Tensor, n: int) -> torch.Tensor:
    """[P, D] patch tokens of a square grid -> [P / n^2, D * n^2]: each n x n block of neighbours
    becomes one vector, blocks in row-major order, each block's patches row by row (Idefics3's layout)."""
    side = math.isqrt(patches.shape[0])
    if side * side != patches.shape[0] or side % n:
        raise PlaceholderMismatch(f"pixel shuffle by {n} needs a square patch grid whose side divides by {n}; "
                                  f"got {patches.shape[0]} patch tokens")
    d, blocks = patches.shape[1], side // n
    grid = patches.reshape(blocks, n, blocks, n, d)  # [row block, row in block, col block, col in block, D]
    return grid.permute(0, 2, 1, 3, 4).reshape(blocks * blocks, n * n * d)  # [P / n^2, n^2 * D]


class PixelShuffle(nn.Module):
    """Images (nanoVLM/Idefics3-style): n x n neighbouring patch tokens become one LLM token, so a
    SigLIP tower's 32 x 32 patch grid at n = 4 costs 64 tokens, not 1024. Each image is its own grid:
    list of [P_i, d_in] -> [sum P_i / n^2, d_out]."""

    def __init__(self, inner: nn.Module, n: int):
        super().__init__()
        self.inner, self.n = inner, n

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.inner(torch.cat([pixel_shuffle(f, self.n) for f in features]))


def project(projector: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    """Each item's encoder features [T_i, d_in] -> LLM embeddings of all items [sum tokens_i, d_llm]."""
    if isinstance(projector, (FrameStack, PixelShuffle)):  # each item is padded or gridded on its own
        return projector(features)
    return projector(torch.cat(features))  # [sum T_i, d_in] -> [sum T_i * tokens, d_llm]


def build_projector(kind: str, d_in: int, d_out: int, hidden: int | None = None, tokens: int = 1,
                    stack: int = 1, shuffle: int = 1) -> nn.Module:
    """`stack` encoder frames side by side (or a `shuffle` x `shuffle` block of patches) make one
    input vector (d_in * stack * shuffle^2 wide); each input vector makes `tokens` LLM tokens."""
    if kind not in PROJECTORS:
        raise ConfigError(f"unknown projector type {kind!r}; choose one of {', '.join(PROJECTORS)}")
    if tokens < 1:
        raise ConfigError(f"projector tokens_per_feature must be at least 1, got {tokens}")
    if stack < 1:
        raise ConfigError(f"stack_frames must be at least 1, got {stack}")
    if stack > 1 and shuffle > 1:
        raise ConfigError("a projector either stacks audio frames or pixel-shuffles image patches, not both")
    net = PROJECTORS[kind](d_in * stack * shuffle**2, d_out * tokens, hidden)
    if tokens > 1:
        net = Expand(net, d_out)
    if shuffle > 1:
        return PixelShuffle(net, shuffle)
    return FrameStack(net, stack) if stack > 1 else net
