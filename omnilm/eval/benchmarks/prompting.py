"""What the scorers' items share beyond media.py: the prompt turn, audio cells, stable ids."""
from __future__ import annotations

import hashlib

import numpy as np

from omnilm.core.sample import Message, Sample
from omnilm.data.markers import with_markers
from omnilm.errors import DataError


def user_prompt(text: str, *, images: list = (), audios: list = (), id: str = "") -> Sample:
    """One user turn: a marker line per medium first (lmms-eval hands its chat models the media
    before the text), then the text."""
    content = with_markers(text, len(images), len(audios))
    return Sample(messages=[Message("user", content)], images=list(images), audios=list(audios), id=id)


def audio_of(cell, column: str = "audio"):
    """An Audio-column cell -> what load_audio reads: bytes, a path, or (float32 waveform, rate)."""
    if isinstance(cell, dict) and cell.get("array") is not None:
        rate = cell.get("sampling_rate")
        if not isinstance(rate, int) or rate <= 0:
            raise DataError(f"column {column!r}: an audio array needs a positive integer sampling_rate, got {rate!r}")
        return np.asarray(cell["array"], dtype=np.float32), rate
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, (bytes, str)) and cell:
        return cell
    raise DataError(f"column {column!r}: the audio has neither bytes, a path nor an array")


def content_id(*parts) -> str:
    """A stable id for a row whose dataset has no id column: a digest of what identifies it, so a
    resumed run finds the same id however the rows are batched."""
    digest = hashlib.sha1()
    _digest(digest, parts)
    return digest.hexdigest()[:16]


def _digest(digest, part) -> None:
    if isinstance(part, (tuple, list)):
        for inner in part:
            _digest(digest, inner)
    elif isinstance(part, bytes):
        digest.update(part)
    elif hasattr(part, "tobytes"):  # a waveform or a decoded PIL image: its content, not its repr
        digest.update(part.tobytes())
    else:
        digest.update(repr(part).encode("utf-8"))
    digest.update(b"\0")
