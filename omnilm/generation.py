"""Text generation from Samples: batched, KV-cached, with stop strings, sampling and streaming.

One path for batch, stream, chat and serve: prompts encoded once by the model's OmniProcessor,
and one detokenizer (ReplyText) that makes the reply text, streams it, and ends a row at its
stop string. The fast path is the LLM's own
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
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers.generation import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria,
                                     StoppingCriteriaList, TemperatureLogitsWarper, TopKLogitsWarper,
                                     TopPLogitsWarper)

from omnilm.data.collate import Batch, collate
from omnilm.core.sample import Sample
from omnilm.data.encoded import Encoded
from omnilm.generation_settings import GenerationSettings

# The prompt reaches the LLM as embeddings, so transformers can only penalise generated tokens;
# GenerationSettings.repetition_penalty documents that, the warning would repeat it on every call.
warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")


@dataclass
class Completion:
    text: str  # decoded, special tokens skipped, leading whitespace dropped, cut before the first stop string
    token_ids: list[int]  # generated ids, without the final EOS
    prompt_tokens: int  # prompt length, media placeholder positions included
    completion_tokens: int  # tokens the model produced, EOS included
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_new_tokens reached)


def generate(model, processor, prompts: Sequence[Sample | Encoded], config: GenerationSettings | None = None, *,
             readers: Sequence | None = None, streamer=None) -> list[Completion]:
    """One Completion per prompt, in order. A prompt is a Sample (encoded here) or an Encoded one
    (`processor.encode_prompt`: the server encodes each request once, to check it, and hands that
    over). Prompts may mix media and differ in length: they are left-padded into one batch so
    every row's next token sits in the last column.

    `readers` (optional, one per prompt or None) stream the reply text: each gets `put(piece)` as
    soon as a piece is certain, and the rest at the end; a reader whose `cancelled` turns true
    gets nothing more, and once every row is a cancelled reader generation stops
    (GenerationCancelled). `streamer` (optional) receives token ids by transformers' BaseStreamer
    protocol (benchmarks time the first token with it).
    """
    config = (config or GenerationSettings()).validate()
    if not prompts:
        return []
    batch, lengths = prepare(model, processor, prompts)
    eos = set() if config.ignore_eos else eos_ids(model, processor.tokenizer)
    replies = _Replies(processor.tokenizer, config.stop, eos, list(readers or [None] * len(prompts)))
    # inference_mode, not just the no_grad transformers uses: it also skips autograd's version
    # counters and view tracking on every op, which is most of the per-token cost of small models
    # (about 12 % of the step on the tiny recipe). Nothing made here outlives the call.
    with _eval_mode(model), _seeded(config.seed, model.device), torch.inference_mode():
        ids = _generate_ids(model, batch, config, processor.tokenizer, [replies] if replies.watch else [],
                            streamer)  # [B, N]
    return [replies.complete(i, row, n) for i, (row, n) in enumerate(zip(ids.tolist(), lengths))]


def stream(model, processor, prompt: Sample | Encoded, config: GenerationSettings | None = None) -> Iterator[str]:
    """Text pieces as the model produces them; their concatenation equals generate()'s text.

    Why a thread around the LLM's own `generate` rather than a hand-written decode loop: the
    tokens are then the very ones generate() returns (same KV cache, sampling and seeding code),
    for any LLM. The pieces are what generate() hands its readers, as for the server. Closing
    the iterator early stops the generation at its next step.
    """
    config = (config or GenerationSettings()).validate()
    reader = _Pieces()
    failure: list[BaseException] = []

    def work():
        try:
            generate(model, processor, [prompt], config, readers=[reader])
        except BaseException as err:  # handed to the consumer, raised there
            failure.append(err)
        finally:
            reader.queue.put(None)

    worker = threading.Thread(target=work, name="omnilm-generate", daemon=True)
    worker.start()
    try:
        while (piece := reader.queue.get()) is not None:
            yield piece
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        worker.join()


def prepare(model, processor, prompts: Sequence[Sample | Encoded]) -> tuple[Batch, list[int]]:
    """Prompts -> a left-padded batch on the model's device, and each prompt's length."""
    encoded = [p if isinstance(p, Encoded) else processor.encode_prompt(p) for p in prompts]
    batch = collate(encoded, processor.tokenizer.pad_token_id, padding_side="left")
    return batch.to(model.device), [len(e.input_ids) for e in encoded]


def eos_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS plus whatever the LLM's generation config names (chat models often add <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(i) for i in ids if i is not None}


def _generate_ids(model, batch: Batch, config: GenerationSettings, tokenizer, stopping: list, streamer) -> torch.Tensor:
    eos = None if config.ignore_eos else sorted(eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id
    if not config.use_cache:
        return _recompute_loop(model, batch, config, eos or [], pad, stopping, streamer)
    return model.generate(
        batch.input_ids, batch.attention_mask, batch.media, batch.features,
        eos_token_id=eos, pad_token_id=pad, use_cache=True, streamer=streamer,
        stopping_criteria=StoppingCriteriaList(stopping), **config.transformers_kwargs(),
    )  # [B, N]: with inputs_embeds only, the LLM returns just the new tokens


@torch.no_grad()
def _recompute_loop(model, batch: Batch, config: GenerationSettings, eos: list[int], pad: int,
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


def _logits_processors(config: GenerationSettings) -> LogitsProcessorList:
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


def reply_text(decoded: str) -> str:
    """What a reader sees: templates that put a space before the reply (" red triangle", one
    token in most vocabularies) train the model to start with one; the reply does not."""
    return decoded.lstrip()


class ReplyText:
    """The one detokenizer: a row's generated ids -> the reply text a reader sees, piece by piece.

    Each step decodes the row's ids so far in full, so what has been handed out is exactly a
    prefix of the final text whatever the tokenizer does with neighbouring tokens. The text drops
    its leading whitespace (`reply_text`) and ends before the first stop string, which also ends
    the row; while generating, half a character or a tail that could begin a stop string is held
    back until it is certain.
    """

    def __init__(self, tokenizer, stops: list[str], eos: set[int] = frozenset()):
        self.tokenizer, self.stops, self.eos = tokenizer, stops, eos
        self.ids: list[int] = []  # the reply's ids: no EOS, nothing after the end
        self.sent = ""  # text already handed out
        self.end: str | None = None  # "eos" | "stop" once the reply is over

    def push(self, token: int) -> str:
        """One more generated token -> the text it makes certain ("" while unsure, or after the end)."""
        if self.end is not None:
            return ""
        if token in self.eos:
            self.end = "eos"
            return ""
        self.ids.append(token)
        return self.rest(self._text(final=False))

    def take(self, row: list[int]) -> None:
        """A whole row at once, when nobody watched it being generated (no stop strings, no readers)."""
        ended = next((i for i, t in enumerate(row) if t in self.eos), None)
        self.ids, self.end = row[:ended] if ended is not None else list(row), "eos" if ended is not None else None

    def final(self) -> str:
        """The whole reply once generation is over (an incomplete last character decodes to
        U+FFFD, as in a full decode)."""
        return self._text(final=True)

    def rest(self, text: str) -> str:
        """What `text` adds to what has been handed out, now counted as handed out."""
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    @property
    def produced(self) -> int:
        """Tokens the model produced for this reply, its EOS included."""
        return len(self.ids) + (self.end == "eos")

    def _text(self, final: bool) -> str:
        """The reply so far, as far as it is certain (all of it when `final`)."""
        text = reply_text(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        cut = first_stop(text, self.stops)
        if cut is not None:
            text, self.end = text[:cut], "stop"
        elif not final:
            if text.endswith("\ufffd"):  # half of a multi-byte character: nothing new is certain yet
                return self.sent
            text = text[: len(text) - held_back(text, self.stops)]
        return text


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    return max((k for s in stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])), default=0)


class GenerationCancelled(Exception):
    """Raised inside generation when every row's reader has gone away: stop generating."""


class _Replies(StoppingCriteria):
    """The batch's replies, one ReplyText a row, watching generation as a stopping criterion
    (called once a step, in transformers' loop and in the recompute loop alike): a row ends at
    its stop string, and each reader gets its row's text as it becomes certain.

    Why not transformers' StopStringCriteria and TextIteratorStreamer: the criterion matches the
    tokens' raw vocabulary strings, special tokens included (a stop "e" fires on
    "<|endofmedia|>", which the reply never shows), so generation could end where the text has
    no stop string; the streamer takes one row and cuts pieces at spaces. Here stopping, cutting
    and streaming read the one text the reader gets."""

    def __init__(self, tokenizer, stops: list[str], eos: set[int], readers: list):
        self.rows = [ReplyText(tokenizer, stops, eos) for _ in readers]
        self.readers = readers
        self.watch = bool(stops) or any(r is not None for r in readers)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if all(r is not None and r.cancelled for r in self.readers):
            raise GenerationCancelled
        for reply, reader, token in zip(self.rows, self.readers, input_ids[:, -1].tolist()):
            self._hand(reader, reply.push(token))
        return torch.tensor([r.end == "stop" for r in self.rows], dtype=torch.bool, device=input_ids.device)

    def complete(self, row: int, ids: list[int], prompt_tokens: int) -> Completion:
        """The row's Completion; its reader gets what was held back until now."""
        reply = self.rows[row]
        if not self.watch:
            reply.take(ids)
        text = reply.final()
        self._hand(self.readers[row], reply.rest(text))
        return Completion(text, reply.ids, prompt_tokens, reply.produced, "stop" if reply.end is not None else "length")

    @staticmethod
    def _hand(reader, piece: str) -> None:
        if piece and reader is not None and not reader.cancelled:
            reader.put(piece)


class _Pieces:
    """stream()'s reader: pieces from the generating thread to the consumer, and a cancel switch."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()

    def put(self, piece: str) -> None:
        self.queue.put(piece)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()


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
