"""Multiple-choice options as the lmms-eval tasks write them: "A. first\nB. second"."""
from __future__ import annotations

from typing import Sequence

from omnilm.errors import DataError


def letters(count: int) -> list[str]:
    if not 1 <= count <= 26:
        raise DataError(f"a multiple-choice question needs 1 to 26 options, got {count}")
    return [chr(ord("A") + i) for i in range(count)]


def lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {option}" for letter, option in zip(letters(len(options)), options))


def percent(hits: Sequence[float]) -> float:
    """Mean of 0/1 (or soft) hits as a percentage, as lmms-eval reports accuracy."""
    if not hits:
        raise DataError("no results to score")
    return 100.0 * sum(hits) / len(hits)
