"""Spoken versions of text prompts, made offline with Debian's espeak-ng.

Synthetic speech has an exact transcript, so it can train and test the audio path without a
speech corpus. Files are named by a hash of (text, voice, rate): a rerun, or another data set
asking for the same sentence, reuses what is on disk. espeak-ng writes 16-bit mono wav at
22,050 Hz; the processor resamples to what the audio encoder wants.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from omnilm.errors import DataError, MediaError, MissingDependency
from omnilm.files import atomic_file

ESPEAK = "espeak-ng"
INSTALL = "apt-get update && apt-get install -y espeak-ng"

# Train and test use clearly different voices (accent and gender) so a test score measures
# understanding speech, not memorising one synthetic voice.
TRAIN_VOICE = "en-us"  # American English, default male
TEST_VOICE = "en-gb+f3"  # British English with the female3 variant


def _espeak() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise MissingDependency(f"{ESPEAK} is not installed (it synthesizes speech): {INSTALL}")
    return path


def _voice_rows(espeak: str, selector: str) -> list[list[str]]:
    """`espeak-ng --voices[=selector]` as rows: Pty Language Age/Gender VoiceName File [...]."""
    cmd = [espeak, f"--voices={selector}" if selector else "--voices"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()[1:] if len(line.split()) >= 5]


def list_voices(language: str | None = None) -> list[str]:
    """Voice names accepted by `voice=`, optionally only those of one language (e.g. "en").

    A variant can be appended to any of them: "en-us+f3" (list_variants() names them).
    MBROLA voices are left out: they need extra Debian packages.
    """
    voices = []
    for cols in _voice_rows(_espeak(), language or ""):
        if cols[4].startswith(("mb/", "!v/")):  # MBROLA, or a bare variant
            continue
        if cols[1] not in voices:
            voices.append(cols[1])
    return voices


def list_variants() -> list[str]:
    """Variant names for "voice+variant", e.g. "f3" (a female voice), "m3", "klatt"."""
    return [cols[4][3:] for cols in _voice_rows(_espeak(), "variant") if cols[4].startswith("!v/")]


@functools.lru_cache(maxsize=None)
def check_voice(voice: str) -> None:
    """Raise unless espeak-ng knows the voice and variant exactly.

    Needed because espeak-ng does not fail on a bad name when reading text from stdin: it
    falls back to a default or a prefix match ("no-such-voice" speaks Norwegian,
    like "nb") and ignores an
    unknown "+variant", so a typo would silently give train and test the same voice.
    """
    base, _, variant = voice.partition("+")
    if base not in list_voices():
        raise ValueError(
            f"unknown espeak-ng voice {base!r}; choose one of list_voices(), e.g. {TRAIN_VOICE!r}"
        )
    if variant and variant not in list_variants():
        raise ValueError(
            f"unknown espeak-ng variant {variant!r} in {voice!r}; choose one of list_variants()"
        )


def speech_path(text: str, voice: str, out_dir: str | Path, rate: int | None = None) -> Path:
    """Where synthesize() puts (or finds) the wav for this text, voice and rate."""
    key = json.dumps([text, voice, rate], ensure_ascii=False)
    return Path(out_dir) / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.wav"


def _synthesize_one(espeak: str, text: str, voice: str, rate: int | None, path: Path) -> None:
    cmd = [espeak, "-v", voice, "--stdin"]
    if rate is not None:
        cmd += ["-s", str(rate)]
    # Written under a temporary name, so an interrupted run never leaves a truncated file that a
    # later run would take for a cached one.
    with atomic_file(path) as tmp:
        # Text goes through stdin so one starting with "-" is not read as an option.
        result = subprocess.run(cmd + ["-w", str(tmp)], input=text, capture_output=True, text=True)
        if result.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:  # 44 bytes = wav header only
            raise MediaError(
                f"{ESPEAK} failed (exit {result.returncode}) for voice {voice!r} on text {text!r}: "
                f"{result.stderr.strip() or 'no audio written'}"
            )


def synthesize(
    texts: Sequence[str],
    voice: str,
    out_dir: str | Path,
    *,
    rate: int | None = None,
    jobs: int = 2,
    progress: bool = True,
) -> list[Path]:
    """One wav per text (same order); existing files are reused, missing ones made in parallel.

    rate is espeak-ng's words per minute (its default is 175).
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"synthesize: text {i} is empty or not a string: {text!r}")
    if jobs < 1:
        raise ValueError(f"synthesize: jobs must be at least 1, got {jobs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [speech_path(t, voice, out_dir, rate) for t in texts]
    todo = {p: t for p, t in zip(paths, texts) if not p.exists()}  # dict: duplicates once
    if todo:
        espeak = _espeak()
        check_voice(voice)
        bar = tqdm(total=len(todo), desc=f"{ESPEAK} {voice}", unit="clip", disable=not progress)
        # Threads suffice: the work happens in espeak-ng subprocesses, not in Python.
        with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(_synthesize_one, espeak, t, voice, rate, p) for p, t in todo.items()
            ]
            try:
                for future in as_completed(futures):
                    future.result()  # re-raises the first failure with its message
                    bar.update(1)
            except BaseException:
                for future in futures:  # don't wait for the rest of a doomed batch
                    future.cancel()
                raise
    return paths
