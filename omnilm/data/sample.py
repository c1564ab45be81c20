"""The one in-memory form every data source produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
MEDIA_TOKENS = {"image": IMAGE_TOKEN, "audio": AUDIO_TOKEN}
# Token ids that stand for one media feature vector each. Negative, so they can never collide
# with a real vocabulary entry and no tokenizer or embedding table has to change.
PLACEHOLDER_IDS = {"image": -200, "audio": -300}


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str  # may contain <image> / <audio> markers, matched in order with Sample media


@dataclass
class Sample:
    messages: list[Message]
    images: list[Any] = field(default_factory=list)  # paths or PIL images, in marker order
    audios: list[Any] = field(default_factory=list)  # paths or float32 16 kHz waveforms
    id: str = ""
    meta: dict = field(default_factory=dict)  # e.g. question type for evaluation
