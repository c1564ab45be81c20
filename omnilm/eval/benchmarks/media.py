"""Hub media values as omnilm's loaders read them, and the prompt every benchmark item is.

`datasets` yields an Image/Audio column as a dict {"bytes", "path"} when read undecoded, a PIL
image or {"array", "sampling_rate"} when decoded; omnilm's loaders (data/images.py load_image,
data/audio.py load_audio) take bytes, a path, a PIL image or (waveform, rate), and apply their
size limits when the processor reads them.
"""
from __future__ import annotations

import numpy as np

from omnilm.core.sample import Message, Sample
from omnilm.data.markers import with_markers
from omnilm.errors import DataError


def hub_image(value, where: str):
    """An Image-column value -> bytes, a path or the PIL image itself."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, str)) and value:
        return value
    if value is not None and hasattr(value, "convert"):  # a decoded PIL image
        return value
    raise DataError(f"{where}: image has neither bytes nor a path")


def hub_audio(value, where: str):
    """An Audio-column value -> bytes, a path, or (float32 waveform, sampling rate)."""
    if isinstance(value, dict) and value.get("array") is not None:
        rate = value.get("sampling_rate")
        if not isinstance(rate, int) or rate <= 0:
            raise DataError(f"{where}: audio array needs a positive integer sampling_rate, got {rate!r}")
        return np.asarray(value["array"], dtype=np.float32), rate
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, str)) and value:
        return value
    raise DataError(f"{where}: audio has neither bytes, a path nor an array")


def user_prompt(text: str, *, images: list = (), audios: list = (), id: str = "") -> Sample:
    """One user turn: a marker line per medium first (lmms-eval hands its chat models the media
    before the text), then the text."""
    content = with_markers(text, len(images), len(audios))
    return Sample(messages=[Message("user", content)], images=list(images), audios=list(audios), id=id)


def column(row: dict, name: str, where: str):
    """row[name], or a one-line error naming the missing column and the ones the row has."""
    if name not in row:
        raise DataError(f"{where}: no column {name!r} (the row has {', '.join(sorted(row))})")
    return row[name]

