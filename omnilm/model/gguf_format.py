"""Export to llama.cpp: a text-model GGUF and one `mmproj-*.gguf` for the image and audio encoders.

(Being built: the text GGUF, the mmproj writer and the checks land in the following commits.)
"""
from __future__ import annotations

from omnilm.errors import OmniError


class NotExpressibleInGGUF(OmniError):
    """The model does something llama.cpp's runtime cannot: the export would answer differently."""


def refuse(setting: str, reason: str, nearest: str) -> NotExpressibleInGGUF:
    return NotExpressibleInGGUF(f"cannot export to GGUF: {setting}: {reason}; nearest exportable choice: {nearest}")
