"""What POPE and MME share: a yes/no question about one image, from a hub row."""
from __future__ import annotations

from omnilm.core.sample import IMAGE_TOKEN, Message, Sample
from omnilm.errors import DataError
from omnilm.eval.benchmarks.media import column, image_of

# lmms-eval's default post_prompt for both tasks (lmms_eval/tasks/pope/pope.yaml, mme/mme.yaml).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


def yes_no_target(row: dict) -> str:
    """The row's answer as "yes" or "no" (lmms-eval lowercases it, and for MME drops periods)."""
    answer = column(row, "answer").lower().strip().replace(".", "")
    if answer not in ("yes", "no"):
        raise DataError(f"column 'answer': expected yes or no, got {row['answer']!r}")
    return answer


def image_question(row: dict, text: str) -> Sample:
    """One user turn: the image, then the question text (the image first, as LLaVA prompts)."""
    return Sample([Message("user", f"{IMAGE_TOKEN}\n{text}")], images=[image_of(row.get("image"))])
