"""Where media markers sit in a message's text: the one layout every path writes and checks.

A message's parts (media markers and text) stand one a line (`join_parts`); media added to a
text that does not mark them go first, images before audio (LLaVA's layout, which the data
sources train on): the chat command (`with_markers`), the server and the web app (parts in the
client's order, `join_parts`) and `data.media_first` (`media_first`) all build it here. Users
cannot type a marker (`reserved_marker`): markers are how media enters a prompt.
"""
from __future__ import annotations

import re

from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, MEDIA_TOKENS
from omnilm.errors import DataError

MARKER = re.compile("(" + "|".join(re.escape(t) for t in MEDIA_TOKENS.values()) + ")")
MODALITY_OF = {token: modality for modality, token in MEDIA_TOKENS.items()}


def join_parts(parts: list[str]) -> str:
    """Markers and text pieces of one message, a line each, in the order given."""
    return "\n".join(parts)


def with_markers(text: str, images: int, audios: int) -> str:
    """`text` with a marker line put first for each image and audio it does not mark itself."""
    missing_images = max(images - text.count(IMAGE_TOKEN), 0)
    missing_audios = max(audios - text.count(AUDIO_TOKEN), 0)
    return join_parts([IMAGE_TOKEN] * missing_images + [AUDIO_TOKEN] * missing_audios + ([text] if text else []))


def mark_unmarked_images(messages: list, images: int) -> None:
    """LLaVA rows with images but no <image> marker: a marker per image opens the first user turn,
    in the images' order, as LLaVA's loader does. Rows that mark their images are left as written."""
    if images == 0 or any(IMAGE_TOKEN in m.content for m in messages if isinstance(m.content, str)):
        return
    first = next((m for m in messages if m.role == "user"), None)
    if first is None:
        raise DataError("the row has images but no user turn to attach them to")
    first.content = with_markers(first.content, images, 0)


def media_first(text: str) -> str:
    """"is there a red shape?\\n<image>" -> "<image>\\nis there a red shape?": every marker on a line
    of its own at the start, images before audio, each modality in its own order; then the text
    with its lines kept (a line that held only markers goes; "a <image> b" leaves "a b")."""
    markers = [token for token in MEDIA_TOKENS.values() for _ in range(text.count(token))]
    kept = []
    for line in text.split("\n"):
        if MARKER.search(line):
            line = " ".join(MARKER.sub(" ", line).split())
            if not line:
                continue
        kept.append(line)
    rest = "\n".join(kept).strip()
    return join_parts(markers + ([rest] if rest else []))


def reserved_marker(text: str) -> str | None:
    """The first media marker typed in `text`, if any."""
    found = MARKER.search(text)
    return found.group(0) if found else None
