"""How to generate (`GenerationSettings`), each setting's type carrying its bounds.

Kept apart from omnilm.generation (which needs torch) so the CLI's flags and the server's request
fields can take their defaults and bounds from here at no import cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from omnilm.errors import ConfigError

# Each setting's type with its bounds: GenerationSettings checks them, and the server's request
# fields (serve/protocol.py) are declared with the same types.
MaxNewTokens = Annotated[int, Field(ge=1)]
MAX_TEMPERATURE = 2.0  # OpenAI's range; the web app's slider ends there too
Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE)]  # 0 = greedy
TopP = Annotated[float, Field(gt=0, le=1)]  # 1 = off
TopK = Annotated[int, Field(ge=0, le=2**31 - 1)]  # 0 = off
RepetitionPenalty = Annotated[float, Field(gt=0, le=10)]  # 1 = off
Seed = Annotated[int, Field(ge=-2**63, le=2**63 - 1)]  # int64, as torch.manual_seed takes it
StopText = Annotated[str, Field(min_length=1, max_length=256)]  # searched for after every token


# strict: True is no seed and "5" no length; revalidate: validate() checks an instance already made
@with_config(ConfigDict(strict=True, allow_inf_nan=False, revalidate_instances="always"))
@dataclass
class GenerationSettings:
    """How to generate: what transformers' GenerationConfig says (`transformers_kwargs` maps it
    there), plus stop strings, a seed per call and the slow reference path."""

    max_new_tokens: MaxNewTokens = 128
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0  # applies to generated tokens (the prompt is embeddings)
    stop: list[StopText] = field(default_factory=list)  # text ends before the first of these
    seed: Seed | None = None  # makes sampling reproducible; one seed drives all rows of a batch
    use_cache: bool = True  # False: recompute everything each token (slow reference path)
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)

    def validate(self) -> "GenerationSettings":
        """Every field within its bounds, or a one-line ConfigError naming the first that is not."""
        try:
            _SETTINGS.validate_python(self)
        except ValidationError as err:
            first = err.errors()[0]
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])[1:]
            raise ConfigError(f"{where} = {first['input']!r}: {first['msg'][0].lower()}{first['msg'][1:]}") from None
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


_SETTINGS = TypeAdapter(GenerationSettings)
