"""The one in-memory form every data source produces, and the token facts every layer shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnilm.errors import DataError

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
MEDIA_TOKENS = {"image": IMAGE_TOKEN, "audio": AUDIO_TOKEN}
# Token ids that stand for one media feature vector each. Negative, so they can never collide
# with a real vocabulary entry and no tokenizer or embedding table has to change.
PLACEHOLDER_IDS = {"image": -200, "audio": -300}
# The label of a position nothing is learned at (what torch's cross entropy skips by default).
IGNORE = -100


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

    def about(self, problem: str) -> str:
        """'sample ID: problem'. A sample without an id (a server request) gets the bare problem:
        its caller names it, and a placeholder would name nothing."""
        return f"sample {self.id}: {problem}" if self.id else problem


def check_messages(messages: list[Message]) -> None:
    """What a training conversation needs: text turns, and at least one assistant reply, none of
    them empty (an empty reply would only teach the model to stop at once)."""
    for number, message in enumerate(messages, start=1):
        if not isinstance(message.content, str):
            raise DataError(f"turn {number} ({message.role}): content must be text, "
                            f"got {type(message.content).__name__}")
        if message.role == "assistant" and not message.content.strip():
            raise DataError(f"turn {number}: empty assistant reply (nothing to learn)")
        try:
            message.content.encode("utf-8")
        except UnicodeEncodeError as err:  # e.g. a lone surrogate "\\ud800" escaped in JSON
            raise DataError(f"turn {number} ({message.role}): invalid Unicode {err.object[err.start]!r} "
                            f"at character {err.start}") from None
    if not any(m.role == "assistant" for m in messages):
        raise DataError("no assistant reply to learn")
