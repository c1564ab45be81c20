"""The Accelerator a run trains under, and what FSDP2 needs to know about an OmniLM.

`accelerate launch --config_file configs/accelerate/fsdp2.yaml` (or zero2/zero3.yaml) sets the
strategy through the environment; the loop does not change with it."""
from __future__ import annotations

import os
import warnings

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


def make_accelerator(mixed_precision: str, grad_accum: int) -> Accelerator:
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                              cpu=not torch.cuda.is_available())
    if fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # Accelerate turns FSDP on only for accelerators, but torch's fully_shard also runs over gloo
        # on CPUs: that is how the tests check the very path the GPUs take. Both shared states say so,
        # as every AcceleratorState() made later copies the PartialState's.
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return accelerator


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def shard_units(model) -> None:
    """FSDP wraps each module whose class the model lists in `_no_split_modules` (OmniLM declares
    its parts' layer classes: PhiDecoderLayer, CLIPEncoderLayer, WhisperEncoderLayer, ...).
    Everything else (projectors, embeddings, EfficientNet) shares the root unit."""
    # fully_shard warns, on every rank, that the model returns a view (the logits: the LM head's
    # output reshaped), which an in-place op would cut from the backward all-gather. The loop only
    # reads the loss and never edits an output.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor")


def build_device(accelerator, quantization: str):
    """Where to build the model. Under FSDP on the CPU, so no GPU ever holds the whole model:
    fully_shard moves each process's shard to its GPU. NF4 weights are quantized as they reach
    the GPU, so a 4-bit model is built there."""
    if is_fsdp(accelerator) and quantization == "none":
        return torch.device("cpu")
    return accelerator.device
