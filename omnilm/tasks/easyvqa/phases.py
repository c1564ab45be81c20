"""The quickstart's phases: each one's wall time and peak resident memory, printed as it ends.

Peak memory is the process's own high-water mark (the kernel's VmHWM, what `/usr/bin/time -v`
reports as its maximum resident set size). On Linux the mark is reset when a phase starts
(`/proc/self/clear_refs`), so each phase reports its own peak; where that is not possible the
figure is the peak so far, an upper bound of the phase's own. Each phase ends by handing the
memory it freed back to the OS (glibc keeps freed heap pages for reuse: after stage 2 about
1.1 GB more stayed resident through every later phase, and the next phase's peak stacked on it).
"""
from __future__ import annotations

import ctypes
import gc
import resource
import sys
import time
from pathlib import Path

MIB = 1024**2
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def reset_peak_rss() -> bool:
    """Start a new high-water mark at the current resident size; False where the OS cannot."""
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """The process's peak resident memory since start, or since the last reset_peak_rss."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def release_freed_memory() -> None:
    """Collect unreachable objects, then return the heap's free pages to the OS where glibc can."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Phases:
    """Wall time (s) and peak resident memory (MiB) of each phase, printed as it ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        reset_peak_rss()
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.peak_mib[name] = round(peak_rss_bytes() / MIB)
        release_freed_memory()
        print(f"== {name}: {self.seconds[name]:.0f} s, peak memory {self.peak_mib[name]:,} MiB", flush=True)
        return result

    @property
    def overall_peak_mib(self) -> int:
        return max(self.peak_mib.values(), default=0)
