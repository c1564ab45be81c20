"""Ctrl-C (SIGINT) and SIGTERM, which cluster schedulers send before they kill a job, ask a run
to stop at the end of the optimizer step in progress: the loop finishes that step, saves it,
and raises TrainingStopped, so --resume continues bit-exactly. A second signal stops at once
(the last checkpoint stands).

Every process of a launched run must stop after the same step, or the others would wait for it
in the next all-reduce: they agree through one one-element all-reduce per optimizer step; a
single process needs none and reads its own flag."""
from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger("omnilm.training")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While entered, SIGINT and SIGTERM are noted instead of raising (main thread only: Python
    delivers signals there, and a run in another thread keeps the default behaviour)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second one: now, without saving
        self.signum = signum
        log.warning("%s: stopping after the optimizer step in progress, which will be saved "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def agreed(self, accelerator) -> int | None:
        """The signal that makes this step the last one, the same on every process (None: go on)."""
        if accelerator.num_processes == 1:
            return self.signum
        signum = torch.tensor(self.signum or 0, device=accelerator.device)
        torch.distributed.all_reduce(signum, op=torch.distributed.ReduceOp.MAX)
        return int(signum) or None
