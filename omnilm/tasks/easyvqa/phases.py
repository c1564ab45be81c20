"""The quickstart's phases: each one's wall time and peak resident memory, printed as it ends.

The whole command's peak is the process's own high-water mark (getrusage's ru_maxrss, the
figure `/usr/bin/time -v` reports). A phase that raises that mark gets its exact peak from it;
any other phase's peak is the highest resident size read every SAMPLE_SECONDS while it runs
(from /proc on Linux; elsewhere its resident size at the end), so a spike shorter than that can
be missed there, never in the whole command's figure. Each phase ends by handing the memory it
freed back to the OS: glibc keeps freed heap pages for reuse, and after stage 2 about 1.1 GB
stayed resident through every later phase, each later peak stacked on it.
"""
from __future__ import annotations

import ctypes
import gc
import resource
import sys
import threading
import time
from pathlib import Path

MIB = 1024**2
SAMPLE_SECONDS = 0.05
_STATM = Path("/proc/self/statm")


def peak_rss_bytes() -> int:
    """The process's peak resident memory since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def resident_bytes() -> int | None:
    """The resident size now (Linux), or None where /proc is absent."""
    try:
        return int(_STATM.read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return None


def _malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Collect unreachable objects, then return the heap's free pages to the OS where glibc can."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ResidentSampler:
    """The highest resident size read every SAMPLE_SECONDS between start() and stop()."""

    def __init__(self):
        self.highest = resident_bytes() or 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self.highest = max(self.highest, resident_bytes() or 0)

    def start(self) -> "ResidentSampler":
        self._thread.start()
        return self

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.highest, resident_bytes() or 0)


class Phases:
    """Wall time (s) and peak resident memory (MiB) of each phase, printed as it ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        record, sampler = peak_rss_bytes(), ResidentSampler().start()
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        sampled, peak = sampler.stop(), peak_rss_bytes()
        self.peak_mib[name] = round((peak if peak > record else sampled) / MIB)
        release_freed_memory()
        print(f"== {name}: {self.seconds[name]:.0f} s, peak memory {self.peak_mib[name]:,} MiB", flush=True)
        return result

    @property
    def overall_peak_mib(self) -> int:
        """The whole process's peak so far (what `/usr/bin/time -v` reports at its end)."""
        return round(peak_rss_bytes() / MIB)
