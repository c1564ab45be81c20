"""How much memory one process needs, printed before the first step: weights, gradients,
optimizer states and activations for the chosen strategy (single, ddp, fsdp, zero2, zero3),
batch and sequence length, so a user sees whether a run fits a 24 GB card without starting it.

Weights, gradients and AdamW states are counted from the model as built (4-bit weights at
their packed size). Activations are what autograd keeps per decoder layer, per token, in
units of the LLM's width (h) and MLP width (f), plus the LM head's logits at the learned
positions: the factors below were fitted to peaks measured on Phi layers (tests/test_memory.py
holds the estimate to 25 % of a measured peak); other layer types (Llama's gated SiLU MLP) keep
somewhat different amounts, so take the figure as a guide, not a guarantee.

Media tokens are among the `seq_len` tokens of a row: with `model.image.tiling` an image's tile
tokens too (the loop logs the most one image can take beside this estimate). The frozen
encoder's forward over them keeps nothing for backward and is freed before the LLM runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024**3
# Per token and decoder layer, in elements of the activation dtype: what backward needs from the
# forward, fitted to the peaks tests/test_memory.py measures on Phi layers (sizes 64-256 wide).
# A frozen LLM still keeps the MLP's activation inputs and its attention's q, k, v; trained
# weights (finetune, LoRA) also keep every linear layer's input and LoRA's dropout copies.
FROZEN_H, FROZEN_F = 1, 7.5
TRAINED_H, TRAINED_F = 13, 8
# Gradient checkpointing keeps each layer's input, and one layer's activations (with their
# gradients) exist at a time while it is recomputed.
CHECKPOINTED_H, RECOMPUTED_LAYERS = 1, 1.3
SHARDED = {"fsdp": ("weights", "gradients", "optimizer"), "zero3": ("weights", "gradients", "optimizer"),
           "zero2": ("gradients", "optimizer")}
STRATEGIES = ("single", "ddp", *SHARDED)


@dataclass(frozen=True)
class MemoryEstimate:
    strategy: str
    processes: int
    weights: int  # bytes on each process
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {"strategy": self.strategy, "processes": self.processes, "weights": self.weights,
                "gradients": self.gradients, "optimizer": self.optimizer, "activations": self.activations,
                "total": self.total}

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {_gib(getattr(self, name))}"
                          for name in ("weights", "gradients", "optimizer", "activations"))
        fits = "fits" if self.total < 22 * GIB else "does not fit"  # 24 GB less the CUDA context and cache slack
        return (f"estimated memory per process ({self.strategy}, {self.processes} process"
                f"{'es' if self.processes > 1 else ''}): {_gib(self.total)} = {parts}; {fits} a 24 GB card")


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB / 10 else f"{num_bytes / 2**20:.1f} MiB"


def estimate_memory(model, *, batch_size: int, seq_len: int, strategy: str = "single", processes: int = 1,
                    gradient_checkpointing: bool = False, activation_bytes: int | None = None) -> MemoryEstimate:
    """Bytes one process holds at its peak for a training step of `batch_size` x `seq_len`
    tokens. `activation_bytes` is the element size of activations (2 under bf16 autocast);
    by default the LLM's weight dtype's."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    weights = sum(_stored_bytes(p) for p in model.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trained)
    optimizer = 2 * gradients  # AdamW: exp_avg and exp_avg_sq, in each parameter's dtype
    share = {"weights": weights, "gradients": gradients, "optimizer": optimizer}
    for part in SHARDED.get(strategy, ()):
        share[part] //= processes
    activations = _activations(model, batch_size * seq_len, gradient_checkpointing, activation_bytes)
    return MemoryEstimate(strategy, processes, activations=activations, **share)


def _stored_bytes(param) -> int:
    return param.numel() * param.element_size()  # a 4-bit Params4bit is its packed bytes already


def _activations(model, tokens: int, checkpointed: bool, element_bytes: int | None) -> int:
    config = model.llm.config
    h, layers = config.hidden_size, config.num_hidden_layers
    f = getattr(config, "intermediate_size", None) or 4 * h
    llm_trains = any(p.requires_grad for p in model.llm.parameters())
    embed = model.llm.get_input_embeddings().weight
    size = element_bytes or (embed.element_size() if embed.dtype.is_floating_point else 2)
    per_layer_h, per_layer_f = (TRAINED_H, TRAINED_F) if llm_trains else (FROZEN_H, FROZEN_F)
    one_layer = tokens * (per_layer_h * h + per_layer_f * f) * size
    if checkpointed:
        kept = tokens * CHECKPOINTED_H * h * size * layers + RECOMPUTED_LAYERS * one_layer
    else:
        kept = one_layer * layers
    # The head's logits at learned positions (at most all of them): bf16/fp32 logits, their fp32
    # copy for the loss and its gradient.
    logits = tokens * config.vocab_size * (size + 2 * 4)
    return int(kept + logits)


def strategy_of(accelerator) -> str:
    """The accelerate launch's strategy, as estimate_memory names it."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return "zero3" if stage == 3 else "zero2" if stage == 2 else "ddp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def peak_allocated(device) -> int | None:
    """The CUDA allocator's peak since the last reset, or None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device)
