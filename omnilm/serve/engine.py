"""One generation engine shared by every request: a single worker thread owns the model.

Why one thread: a model (and its tokenizer) is not safe to run from several threads at once,
and on one device concurrent forwards would only fight over it. Requests are queued instead,
and requests with the same generation settings - streaming or not - are batched into one
left-padded `generate` call, so 32 concurrent requests cost a few batched passes, not 32.
Streamed text leaves the batch step by step: each request's handle is one of `generate`'s
readers (fed on this same thread), a per-request queue the worker never waits on, so a slow client cannot block
the worker; a cancelled stream (client gone) stops receiving, and a batch whose every row is
a cancelled stream stops at its next step. Each request is encoded once, alone, when it
arrives (so one bad request fails alone, not its whole batch); that encoding is what the
batch generates from.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch

from omnilm.data.encoded import Encoded
from omnilm.audio.route import Transcription
from omnilm.core.sample import Sample
from omnilm.errors import OmniError
from omnilm.generation import GenerationCancelled, generate
from omnilm.generation_settings import GenerationSettings
from omnilm.serve.limits import Limits

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5  # how often an idle worker checks whether the engine is closing


class Busy(Exception):
    """The queue is full or the engine is stopping; the caller should retry later (HTTP 503)."""


class PromptTooLong(OmniError):
    """The prompt (plus the requested completion) does not fit the model's limits."""


@dataclass
class StreamStart:
    prompt_tokens: int
    max_new_tokens: int
    transcripts: list[str]  # transcription route: what each audio input said


@dataclass
class StreamEnd:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class StreamHandle:
    """The consumer's end of one streamed generation: StreamStart, text pieces, then StreamEnd.

    Works for async consumers (pass the event loop; `await start()`, `async for`) and for
    threads (`start_sync()`, plain `for`). An error for the request is raised where it is read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop
        self._async_q: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync_q: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self.end: StreamEnd | None = None

    # ---- producer side (worker thread) ----
    def put(self, item) -> None:
        if self._loop is None:
            self._sync_q.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_q.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # ---- consumer side ----
    def cancel(self) -> None:
        self._cancelled.set()

    async def start(self) -> StreamStart:
        """Wait until the request is accepted (or raise why not), before any response bytes go out."""
        return _raise_errors(await self._async_q.get())

    def start_sync(self) -> StreamStart:
        return _raise_errors(self._sync_q.get())

    async def __aiter__(self):
        while not isinstance(item := _raise_errors(await self._async_q.get()), StreamEnd):
            yield item
        self.end = item

    def __iter__(self):
        while not isinstance(item := _raise_errors(self._sync_q.get()), StreamEnd):
            yield item
        self.end = item


def _raise_errors(item):
    if isinstance(item, BaseException):
        raise item
    return item


@dataclass
class _Job:
    sample: Sample
    config: GenerationSettings
    max_tokens_given: bool
    future: Future | None = None  # non-streaming: resolves to a Completion
    handle: StreamHandle | None = None  # streaming
    encoded: Encoded | None = None  # the prompt, encoded once when the request is accepted
    transcripts: list[str] | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.encoded.input_ids) if self.encoded is not None else 0


class Engine:
    def __init__(self, model, processor, limits: Limits | None = None):
        self.model = model
        self.processor = processor
        self.transcription = Transcription.for_processor(processor)
        self.limits = limits or Limits()
        self.context = _context_window(model)
        self.max_prompt_tokens = min(x for x in (processor.max_length, self.limits.max_prompt_tokens,
                                                 self.context) if x is not None)
        self._inbox: queue.Queue = queue.Queue()
        self._pending: list[_Job] = []  # tokenized jobs waiting for a batch (worker thread only)
        self._load = 0  # jobs accepted and not finished; guarded by _lock
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnilm-engine", daemon=True)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "errors": 0, "cancelled": 0}

    # ---- public API (any thread) ----
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        self._closing.set()
        self._inbox.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing.is_set()

    @property
    def load(self) -> int:
        return self._load

    def submit(self, sample: Sample, config: GenerationSettings, max_tokens_given: bool = True) -> Future:
        """Queue a non-streaming request; the Future resolves to a Completion or raises its error."""
        job = _Job(sample, config, max_tokens_given, future=Future())
        self._enqueue(job)
        return job.future

    def stream(self, sample: Sample, config: GenerationSettings, max_tokens_given: bool = True,
               loop: asyncio.AbstractEventLoop | None = None) -> StreamHandle:
        """Queue a streaming request; read it through the returned handle."""
        job = _Job(sample, config, max_tokens_given, handle=StreamHandle(loop))
        self._enqueue(job)
        return job.handle

    def _enqueue(self, job: _Job) -> None:
        if not self.alive:
            raise Busy("the generation engine is not running")
        with self._lock:
            if self._load >= self.limits.max_queue:
                raise Busy(f"{self._load} requests are already queued (limit {self.limits.max_queue}); retry later")
            self._load += 1
        self._inbox.put(job)

    # ---- worker thread ----
    def _run(self) -> None:
        while not self._closing.is_set():
            self._take_new(block=not self._pending)
            batch = self._next_batch()
            if batch:
                self._run_batch(batch)
        self._fail_all(Busy("the server is shutting down"))

    def _take_new(self, block: bool) -> None:
        try:
            job = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while job is not None:
            self._accept(job)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, job: _Job) -> None:
        if job.future is not None and not job.future.set_running_or_notify_cancel():
            self._release()  # the caller gave up while it waited
            return
        if job.handle is not None and job.handle.cancelled:
            self._release()
            return
        _, error = _attempt(lambda: self._prepare(job))
        if error is not None:
            self._finish(job, None, error)
            return
        if job.handle is not None:
            job.handle.put(StreamStart(job.prompt_tokens, job.config.max_new_tokens, job.transcripts or []))
        self._pending.append(job)

    def _prepare(self, job: _Job) -> None:
        """Encode alone and check the limits: a bad request fails here, before it joins a batch.
        The length is checked here, not by the processor, to explain it in serving terms."""
        sample, transcripts = self.transcription(job.sample)  # the transcription route, before the processor
        encoded = self.processor.encode_prompt(sample, check_length=False)
        prompt = len(encoded.input_ids)
        if prompt > self.max_prompt_tokens:
            raise PromptTooLong(f"the prompt is {prompt} tokens; this server accepts at most {self.max_prompt_tokens} "
                                "(shorten the messages or send fewer images)")
        config = job.config.validate()
        if self.context is not None:
            room = self.context - prompt
            if job.max_tokens_given and config.max_new_tokens > room:
                raise PromptTooLong(
                    f"this model's context is {self.context} tokens, but {prompt + config.max_new_tokens} were "
                    f"requested ({prompt} in the messages, {config.max_new_tokens} for the completion); "
                    "shorten the messages or lower max_tokens")
            if room < 1:
                raise PromptTooLong(f"the prompt is {prompt} tokens, which fills this model's "
                                    f"{self.context}-token context; shorten the messages")
            config = replace(config, max_new_tokens=min(config.max_new_tokens, room))
        job.encoded, job.transcripts, job.config = encoded, transcripts, config

    def _next_batch(self) -> list[_Job]:
        """The oldest waiting request plus later ones with the same settings, up to max_batch_size;
        a seeded request alone (`_batch_size`)."""
        for job in [j for j in self._pending if j.handle is not None and j.handle.cancelled]:
            self._pending.remove(job)  # its client left while it waited
            self.stats["cancelled"] += 1
            self._release()
        if not self._pending:
            return []
        first = self._pending[0].config
        batch = [j for j in self._pending if _batch_key(j.config) == _batch_key(first)][: self._batch_size(first)]
        self._pending = [j for j in self._pending if j not in batch]
        return batch

    def _batch_size(self, config: GenerationSettings) -> int:
        """A seeded request runs alone: its reply then never depends on what arrived with it. In a
        batch, one seed drives every row's draws and the batch's padding shifts its logits, so the
        same request would get other text beside other requests."""
        return 1 if config.seed is not None else self.limits.max_batch_size

    def _run_batch(self, batch: list[_Job]) -> None:
        started = time.monotonic()
        with torch.no_grad():
            results, error = _attempt(lambda: generate(self.model, self.processor, [j.encoded for j in batch],
                                                       batch[0].config, readers=[j.handle for j in batch]))
        if isinstance(error, GenerationCancelled):
            self.stats["cancelled"] += len(batch)
            for _ in batch:
                self._release()
            return
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        log.debug("batch of %d in %.2f s", len(batch), time.monotonic() - started)
        for i, job in enumerate(batch):
            if error is None and job.handle is not None:
                self.stats["cancelled"] += job.handle.cancelled
                if not job.handle.cancelled:
                    job.handle.put(StreamEnd(results[i].prompt_tokens, results[i].completion_tokens,
                                             results[i].finish_reason))
                self._release()
            else:
                self._finish(job, results[i] if error is None else None, error)

    def _finish(self, job: _Job, result, error: BaseException | None) -> None:
        if error is not None:
            self.stats["errors"] += 1
        if job.handle is not None:
            job.handle.put(error if error is not None else result)
        elif error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._load -= 1

    def _fail_all(self, error: BaseException) -> None:
        for job in self._pending:
            self._finish(job, None, error)
        self._pending = []
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is not None and (job.future is None or job.future.set_running_or_notify_cancel()):
                self._finish(job, None, error)


def _attempt(fn):
    """(result, None) or (None, error): one request's failure must never end the worker."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - handed to the request(s) that caused it
        if not isinstance(err, (OmniError, GenerationCancelled)):
            log.exception("generation failed")
        return None, err


def _batch_key(config: GenerationSettings) -> tuple:
    """Requests share a batch only when every generation setting is the same."""
    return (config.max_new_tokens, config.temperature, config.top_p, config.top_k, config.repetition_penalty,
            tuple(config.stop), config.seed, config.use_cache, config.ignore_eos)


def _context_window(model) -> int | None:
    config = getattr(model.llm, "config", None)
    return getattr(config, "max_position_embeddings", None)
