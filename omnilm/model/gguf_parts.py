"""What the gguf_* modules share: the refusal they raise and the way a tensor is written."""
from __future__ import annotations

import numpy as np
import torch

from omnilm.errors import OmniError

NUMPY_TYPES = {"f32": np.float32, "f16": np.float16}  # the mmproj's tensor types


class NotExpressibleInGGUF(OmniError):
    """The model does something llama.cpp's runtime cannot: the export would answer differently."""


def refuse(setting: str, reason: str, nearest: str) -> NotExpressibleInGGUF:
    return NotExpressibleInGGUF(f"cannot export to GGUF: {setting}: {reason}; nearest exportable choice: {nearest}")


def add_tensor(writer, name: str, tensor: torch.Tensor, tensor_type: str) -> None:
    """`tensor` as `tensor_type` (f32 or f16) under llama.cpp's `name`."""
    array = tensor.detach().to("cpu", torch.float32).numpy().astype(NUMPY_TYPES[tensor_type])
    writer.add_tensor(name, np.ascontiguousarray(array))
