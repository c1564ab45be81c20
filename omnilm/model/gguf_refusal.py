"""What the GGUF export refuses: one error class and its one-line message (shared by the gguf_* modules)."""
from __future__ import annotations

from omnilm.errors import OmniError


class NotExpressibleInGGUF(OmniError):
    """The model does something llama.cpp's runtime cannot: the export would answer differently."""


def refuse(setting: str, reason: str, nearest: str) -> NotExpressibleInGGUF:
    return NotExpressibleInGGUF(f"cannot export to GGUF: {setting}: {reason}; nearest exportable choice: {nearest}")
