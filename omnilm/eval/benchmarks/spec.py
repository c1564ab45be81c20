"""What a benchmark is to the runner: the hub rows it reads, the items it asks, how it scores.

One subclass per benchmark, stateless: the runner reads rows (from the hub or a local copy),
turns them into Items, generates a reply for each, extracts the answer lmms-eval would extract,
and hands the collected results to `score`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from omnilm.core.sample import Sample


@dataclass(frozen=True)
class Item:
    """One scored question."""
    id: str  # unique within the benchmark run: predictions are resumed by it
    sample: Sample  # the prompt: a user Message with <image>/<audio> markers and its media
    target: Any  # what scoring compares with (an answer, a list of answers, a letter, a text)
    meta: dict  # category, split, question id, rotation, ... (JSON-serializable)


class Benchmark:
    """A benchmark as lmms-eval scores it. Subclasses set the class attributes and the four methods."""
    name: str  # "pope", "mme", ...
    hub_id: str  # the Hugging Face dataset id lmms-eval reads
    config_name: str | None = None  # the dataset configuration (subset), if any
    split: str = "test"  # the split lmms-eval scores
    revision: str | None = None  # pinned revision when lmms-eval pins one
    lmms_eval_task: str = ""  # the lmms-eval task (and yaml/utils file) this follows
    max_new_tokens: int = 16

    def local_rows(self):
        """Rows of a benchmark that ships with a package instead of the hub (easy-VQA); None otherwise."""
        return None

    def joined(self, rows, other_config):
        """The rows `items` reads, from those of `config_name` and, for a benchmark spread over
        several configurations (GQA's images), `other_config(name)` -> that configuration's rows."""
        return rows

    def items(self, rows) -> Iterator[Item]:
        """rows: dicts in the hub dataset's schema -> the questions to ask."""
        raise NotImplementedError

    def extract(self, reply: str, item: Item) -> Any:
        """The answer lmms-eval would extract from a reply."""
        raise NotImplementedError

    def score(self, results: list[dict]) -> dict[str, float]:
        """results: [{"id", "prediction" (extracted), "reply", "target", "meta"}] -> named scores."""
        raise NotImplementedError

    def summary(self, scores: dict[str, float]) -> str:
        """One line for the terminal."""
        return f"{self.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
