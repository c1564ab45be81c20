"""Offline weights by name, so a recipe can say `name_or_path: zoo:smollm2-135m-instruct`.

Each name maps to a function that returns the converted folder, converting it on first use
(see the modules it imports). The names stay in saved recipes, so a run folder made on one
machine loads on another that has the same PyPI weight packages installed.
"""
from __future__ import annotations

from pathlib import Path

from omnilm.errors import ConfigError

PREFIX = "zoo:"


def _smollm2() -> Path:
    from omnilm.zoo.smollm2 import smollm2_folder

    return smollm2_folder()


def _whisper_encoder() -> Path:
    from omnilm.zoo.whisper_ct2 import whisper_encoder_folder

    return whisper_encoder_folder()


def _whisper_ct2() -> Path:
    from omnilm.zoo.whisper_ct2 import whisper_ct2_dir

    return whisper_ct2_dir()


ZOO = {
    "smollm2-135m-instruct": _smollm2,  # LLM (transformers folder)
    "whisper-tiny.en": _whisper_encoder,  # the Whisper encoder in transformers layout (native audio route)
}
# As a transcriber (model.transcriber) a zoo name means a whole speech-to-text model.
TRANSCRIBERS = {"whisper-tiny.en": _whisper_ct2}  # CTranslate2 folder


def is_zoo(value: str | None) -> bool:
    return bool(value) and value.startswith(PREFIX)


def zoo_folder(value: str, table: dict = ZOO) -> Path:
    """`zoo:NAME` -> the folder of that offline model (converted on first use)."""
    name = value[len(PREFIX):]
    if name not in table:
        raise ConfigError(f"unknown offline model {value!r}; choose one of {', '.join(PREFIX + n for n in table)}")
    return table[name]()


def zoo_transcriber_folder(value: str) -> Path:
    """`zoo:NAME` as model.transcriber -> that offline speech-to-text model's folder."""
    return zoo_folder(value, TRANSCRIBERS)
