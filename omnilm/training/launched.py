"""Ending a process that `accelerate launch` (or torchrun) started, without a crash at exit.

A rank that leaves while its gloo worker threads still hold tensors aborts during interpreter
shutdown: the finalizing interpreter ends any thread that asks for the GIL, and ending a C++
thread inside a destructor calls std::terminate ("terminate called without an active
exception", SIGABRT), after the rank's work is done. tests/test_launched.py shows it; two CI runs
saw rank 1 of a two-process training run end with that message. A launched command that has
finished (its files written and closed) therefore flushes its output and leaves with
os._exit, skipping the teardown that races."""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def is_launched() -> bool:
    """One process of several that a launcher started (it sets WORLD_SIZE for each)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def exit_launched(status: int) -> NoReturn:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


__all__ = ["is_launched", "exit_launched"]
