"""How to generate (`GenerationSettings`), each field carrying its bounds.

Kept apart from omnilm.generation (which needs torch) so the CLI's flags and the server's request
fields can take their defaults and bounds from here at no import cost. The bounds are declared as
the recipe's are (`config.bounded`) and checked by the same walk, so the messages read alike.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from omnilm.config import Bounds, bounded, check_bounds
from omnilm.errors import ConfigError

MAX_TEMPERATURE = 2.0  # OpenAI's range; the web app's slider ends there too
MAX_STOP_CHARS = 256  # every stop string is searched for after every generated token
INT64 = 2**63  # seeds are int64, as torch.manual_seed takes them


@dataclass
class GenerationSettings:
    """How to generate: what transformers' GenerationConfig says (`transformers_kwargs` maps it
    there), plus stop strings, a seed per call and the slow reference path."""

    max_new_tokens: int = bounded(128, ge=1)
    temperature: float = bounded(0.0, ge=0, le=MAX_TEMPERATURE)  # 0 = greedy
    top_p: float = bounded(1.0, gt=0, le=1)  # 1 = off
    top_k: int = bounded(0, ge=0, le=2**31 - 1)  # 0 = off
    # 1 = off; applies to generated tokens (the prompt is embeddings)
    repetition_penalty: float = bounded(1.0, gt=0, le=10)
    stop: list[str] = field(default_factory=list)  # text ends before the first of these
    seed: int | None = bounded(None, ge=-INT64, le=INT64 - 1)  # makes sampling reproducible; one seed for a batch
    use_cache: bool = True  # False: recompute everything each token (slow reference path)
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)

    def validate(self) -> "GenerationSettings":
        """Every number finite and within its bounds, every stop string 1 to MAX_STOP_CHARS
        characters, or a one-line ConfigError naming the first that is not."""
        check_bounds(self)
        if not isinstance(self.stop, list):
            raise ConfigError(f"stop: expected a list of strings, got {type(self.stop).__name__} {self.stop!r}")
        for i, stop in enumerate(self.stop):
            if not isinstance(stop, str) or not 1 <= len(stop) <= MAX_STOP_CHARS:
                raise ConfigError(f"stop[{i}] = {stop!r}: must be a string of 1 to {MAX_STOP_CHARS} characters")
        return self

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def transformers_kwargs(self) -> dict:
        """These settings as transformers' `generate` (and GenerationConfig) names them; greedy
        clears the sampling fields so the model's own generation_config cannot turn them back on."""
        sampling = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k) \
            if self.do_sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        return dict(max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty, **sampling)


def bounds_of(name: str) -> dict:
    """A setting's bounds as keyword arguments (pydantic's Field takes them: the server's request fields)."""
    found: Bounds = next(f for f in dataclasses.fields(GenerationSettings) if f.name == name).metadata["bounds"]
    return {k: v for k, v in dataclasses.asdict(found).items() if v is not None}
