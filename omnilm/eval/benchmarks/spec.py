"""What every benchmark module provides: its items, its answer extraction and its scores.

The interface the runner, the registry and every benchmark share (issue 22). A benchmark is
stateless: it turns hub rows into Items, a model's reply into the answer lmms-eval would
extract, and the collected results into named scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from omnilm.core.sample import Sample


@dataclass(frozen=True)
class Item:
    """One scored question."""

    id: str  # unique within the benchmark run (predictions are resumed by it)
    sample: Sample  # the prompt: a user Message with <image>/<audio> markers + its media
    target: Any  # what scoring compares with (an answer, a list of answers, a letter, a text)
    meta: dict  # category, split, question id, rotation, ... (JSON-serializable)


class Benchmark:
    """One subclass per benchmark, stateless."""

    name: str  # "pope", "mme", ...
    hub_id: str  # the Hugging Face dataset id lmms-eval reads
    config_name: str | None  # the dataset configuration (subset), if any
    split: str  # the split lmms-eval scores
    revision: str | None  # pinned revision when lmms-eval pins one, else None
    lmms_eval_task: str  # the lmms-eval task (and yaml/utils file) this follows
    max_new_tokens: int

    def items(self, rows) -> Iterator[Item]:  # rows: dicts in the hub dataset's schema
        raise NotImplementedError

    def extract(self, reply: str, item: Item) -> Any:  # the answer lmms-eval would extract
        raise NotImplementedError

    def score(self, results: list[dict]) -> dict[str, float]:
        """results: [{"id", "prediction" (extracted), "reply", "target", "meta"}] -> named scores."""
        raise NotImplementedError

    def summary(self, scores: dict[str, float]) -> str:  # one line
        raise NotImplementedError
