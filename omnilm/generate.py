"""Text generation from Samples: batched, KV-cached, with stop strings, sampling and streaming.

One engine for the CLI, the Python API and the servers. The fast path is the LLM's own
`generate` on the embeddings OmniLM.embed builds (media features already scattered in), so any
Hugging Face causal LM keeps its own KV cache and decoding code. `use_cache=False` runs the
seed's way instead (the whole sequence through the model for every new token); it is the
reference the KV-cached path is tested against, and the baseline in bench/generation.py.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers.generation import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria,
                                     StoppingCriteriaList, TemperatureLogitsWarper, TopKLogitsWarper,
                                     TopPLogitsWarper)

from omnilm.data.collate import Batch, collate
from omnilm.data.sample import Sample
from omnilm.errors import ConfigError, DataError

# The prompt reaches the LLM as embeddings, so transformers can only penalise generated tokens;
# GenerationConfig.repetition_penalty documents that, the warning would repeat it on every call.
warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; applies to generated tokens (the prompt is embeddings)
    stop: list[str] = field(default_factory=list)  # text ends before the first of these
    seed: int | None = None  # makes sampling reproducible
    use_cache: bool = True  # False: recompute everything each token (slow reference path)
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)

    def validate(self) -> "GenerationConfig":
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (all(isinstance(s, str) and s for s in self.stop), f"stop strings must be non-empty, got {self.stop!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass
class Completion:
    text: str  # decoded, special tokens skipped, leading whitespace dropped, cut before the first stop string
    token_ids: list[int]  # generated ids, without the final EOS
    prompt_tokens: int  # prompt length, media placeholder positions included
    completion_tokens: int  # tokens the model produced, EOS included
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_new_tokens reached)


def generate(model, samples: list[Sample], config: GenerationConfig | None = None, *,
             streamer=None) -> list[Completion]:
    """One Completion per sample, in order. Samples may mix media and differ in length: they are
    left-padded into one batch so every row's next token sits in the last column.

    `streamer` (optional) follows transformers' BaseStreamer protocol: `put` receives the (empty)
    prompt ids first, then each step's new token ids [B]; `end` is called once at the end.
    """
    config = (config or GenerationConfig()).validate()
    if not samples:
        return []
    batch, lengths = prepare(model, samples)
    tokenizer = model.processor.tokenizer
    stops = _StopStrings(tokenizer, config.stop, len(samples)) if config.stop else None
    # inference_mode, not just the no_grad transformers uses: it also skips autograd's version
    # counters and view tracking on every op, which is most of the per-token cost of small models
    # (about 12 % of the step on the tiny recipe). Nothing made here outlives the call.
    with _eval_mode(model), _seeded(config.seed, model.device), torch.inference_mode():
        ids = _generate_ids(model, batch, config, [stops] if stops else [], streamer)  # [B, N]
    eos = set() if config.ignore_eos else eos_ids(model)
    return [_complete(tokenizer, row, n, eos, config, stops.finished_at[i] if stops else None)
            for i, (row, n) in enumerate(zip(ids.tolist(), lengths))]


def stream(model, sample: Sample, config: GenerationConfig | None = None) -> Iterator[str]:
    """Text pieces as the model produces them; their concatenation equals generate()'s text.

    Why a thread around the LLM's own `generate` rather than a hand-written decode loop: the
    tokens are then the very ones generate() returns (same KV cache, sampling and seeding code),
    for any LLM. A piece that could be the start of a stop string is held back until it is
    known not to be one, so stop strings never reach the caller. Closing the iterator early
    stops the generation at its next step.
    """
    config = (config or GenerationConfig()).validate()
    tokens = _TokenQueue()
    failure: list[BaseException] = []

    def work():
        try:
            generate(model, [sample], config, streamer=tokens)
        except BaseException as err:  # handed to the consumer, raised there
            failure.append(err)
        finally:
            tokens.end()

    worker = threading.Thread(target=work, name="omnilm-generate", daemon=True)
    worker.start()
    detok, text, sent = _Detokenizer(model.processor.tokenizer), "", 0
    try:
        for token_ids in tokens:
            for token in token_ids:
                text += detok.push(token)
            if not sent:  # nothing shown yet: the reply's leading whitespace is not shown either
                text = reply_text(text)
            cut = _first_stop(text, config.stop)
            if cut is not None:
                if cut > sent:
                    yield text[sent:cut]
                return
            safe = len(text) - _held_back(text, config.stop)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if failure:
            raise failure[0]
        text += detok.flush()
        text = text if sent else reply_text(text)
        cut = _first_stop(text, config.stop)
        text = text if cut is None else text[:cut]
        if len(text) > sent:
            yield text[sent:]
    finally:
        tokens.cancel.set()
        worker.join()


def prepare(model, samples: list[Sample]) -> tuple[Batch, list[int]]:
    """Samples -> a left-padded batch on the model's device, and each prompt's length."""
    if getattr(model, "processor", None) is None:
        raise ConfigError("this model has no processor; build it with omnilm.model.build "
                          "(build_model / load_pretrained)")
    for i, sample in enumerate(samples):
        if not sample.messages or sample.messages[-1].role != "user":
            raise DataError(f"sample {sample.id or i}: a prompt for generation must end with a user message")
    encoded = [model.processor(s, generation_prompt=True) for s in samples]
    batch = collate(encoded, model.processor.tokenizer.pad_token_id, padding_side="left")
    return batch.to(model.device), [len(e.input_ids) for e in encoded]


def eos_ids(model) -> set[int]:
    """The tokenizer's EOS plus whatever the LLM's generation config names (chat models often add <|im_end|>)."""
    ids = {model.processor.tokenizer.eos_token_id}
    configured = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(i) for i in ids if i is not None}


def _generate_ids(model, batch: Batch, config: GenerationConfig, stopping: list, streamer) -> torch.Tensor:
    eos = None if config.ignore_eos else sorted(eos_ids(model))
    pad = model.processor.tokenizer.pad_token_id
    if not config.use_cache:
        return _recompute_loop(model, batch, config, eos or [], pad, stopping, streamer)
    sampling = dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k) \
        if config.do_sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return model.generate(
        batch.input_ids, batch.attention_mask, batch.media, batch.features,
        max_new_tokens=config.max_new_tokens, repetition_penalty=config.repetition_penalty,
        eos_token_id=eos, pad_token_id=pad, use_cache=True, streamer=streamer,
        stopping_criteria=StoppingCriteriaList(stopping), **sampling,
    )  # [B, N]: with inputs_embeds only, the LLM returns just the new tokens


@torch.no_grad()
def _recompute_loop(model, batch: Batch, config: GenerationConfig, eos: list[int], pad: int,
                    stopping: list, streamer) -> torch.Tensor:
    """The seed's decoding: every step runs the whole sequence again (no KV cache).

    Media are embedded once (the encoders' output does not change between steps); the LLM part
    is what the KV cache saves. Logits processors are transformers' own, in generate()'s order,
    so greedy and seeded sampling pick what the cached path picks.
    """
    llm = model.llm
    embeds = model.embed(batch.input_ids, batch.media, batch.features)  # [B, T, D]
    mask = batch.attention_mask  # [B, T]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: left padding does not shift positions
    table = llm.get_input_embeddings()
    processors = _logits_processors(config)
    rows = embeds.shape[0]
    generated = torch.zeros(rows, 0, dtype=torch.long, device=embeds.device)  # [B, 0]
    running = torch.ones(rows, dtype=torch.bool, device=embeds.device)  # [B]
    eos_tensor = torch.tensor(eos, dtype=torch.long, device=embeds.device)
    if streamer is not None:
        streamer.put(generated.cpu())  # the BaseStreamer protocol: prompt ids first
    for _ in range(config.max_new_tokens):
        logits = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
        scores = processors(generated, logits[:, -1].float())  # [B, V]
        if config.do_sample:
            next_ids = torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)  # [B]
        else:
            next_ids = scores.argmax(-1)  # [B]
        next_ids = torch.where(running, next_ids, torch.full_like(next_ids, pad))
        generated = torch.cat([generated, next_ids[:, None]], dim=1)  # [B, n]
        if streamer is not None:
            streamer.put(next_ids.cpu())
        embeds = torch.cat([embeds, table(next_ids)[:, None].to(embeds.dtype)], dim=1)  # [B, T+n, D]
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        running &= ~torch.isin(next_ids, eos_tensor)
        for criterion in stopping:
            running &= ~criterion(generated, scores)
        if not running.any():
            break
    if streamer is not None:
        streamer.end()
    return generated


def _logits_processors(config: GenerationConfig) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


def _complete(tokenizer, row: list[int], prompt_tokens: int, eos: set[int], config: GenerationConfig,
              stopped_at: int | None) -> Completion:
    """Trim one generated row (pads after its end, EOS, text after a stop string) into a Completion."""
    produced = len(row) if stopped_at is None else min(stopped_at, len(row))
    ended = next((i for i, t in enumerate(row[:produced]) if t in eos), None)
    if ended is not None:
        produced = ended + 1
    ids = row[:ended] if ended is not None else row[:produced]
    text = reply_text(tokenizer.decode(ids, skip_special_tokens=True))
    cut = _first_stop(text, config.stop)
    if cut is not None:
        text = text[:cut]
    reason = "stop" if ended is not None or cut is not None else "length"
    return Completion(text, ids, prompt_tokens, produced, reason)


def reply_text(decoded: str) -> str:
    """What a reader sees: templates that put a space before the reply (" red triangle", one
    token in most vocabularies) train the model to start with one; the reply does not."""
    return decoded.lstrip()


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of some stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class _StopStrings(StoppingCriteria):
    """Ends a row once its generated text contains a stop string; remembers when, per row."""

    def __init__(self, tokenizer, stops: list[str], rows: int):
        self.tokenizer, self.stops = tokenizer, stops
        # Each token decodes to at least one character, so the newest stop string lies inside
        # this many last tokens; the margin covers tokens that decode differently without context.
        self.window = max(len(s) for s in stops) + 2
        self.finished_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = []
        for i, row in enumerate(input_ids[:, -self.window:].tolist()):
            if self.finished_at[i] is None:
                tail = self.tokenizer.decode(row, skip_special_tokens=True)
                if any(s in tail for s in self.stops):
                    self.finished_at[i] = input_ids.shape[1]
            done.append(self.finished_at[i] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _TokenQueue:
    """A transformers streamer (put/end) that hands token ids to another thread, and a stop switch."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self.cancel = threading.Event()

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        if self.cancel.is_set():
            raise _Cancelled
        self._queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[list[int]]:
        while (item := self._queue.get()) is not None:
            yield item


class _Cancelled(Exception):
    """Raised inside the generating thread when the stream's reader has gone away."""


class _Detokenizer:
    """Incremental decoding: each new token's text, decoded with a little context before it so
    tokenizers whose pieces depend on their neighbours (leading spaces, multi-byte characters)
    give the same text as decoding the whole sequence at once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # end of what has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before, now = self._decode(self.prefix, self.read), self._decode(self.prefix, len(self.ids))
        if len(now) <= len(before) or now.endswith("\ufffd"):  # nothing new, or half a character
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]

    def flush(self) -> str:
        """What is still held back: a final incomplete character decodes to U+FFFD, as in a full decode."""
        before, now = self._decode(self.prefix, self.read), self._decode(self.prefix, len(self.ids))
        self.prefix = self.read = len(self.ids)
        return now[len(before):]

    def _decode(self, start: int, stop: int) -> str:
        return self.tokenizer.decode(self.ids[start:stop], skip_special_tokens=True)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """transformers' sampling draws from torch's global RNG (generate() takes no generator), so a
    seeded call forks that RNG: reproducible here, and the caller's RNG stream is left untouched."""
    if seed is None:
        yield
        return
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(model):
    """Dropout must be off while generating; a model handed over in training mode gets it back.
    An eval-mode model is left alone: switching modes walks every module (~1 ms a call)."""
    if not model.training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train()
