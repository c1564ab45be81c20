"""espeak-ng synthesis: files, cache, voices, errors."""
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from omnilm.data import speech
from omnilm.errors import DataError, MediaError, MissingDependency

needs_espeak = pytest.mark.skipif(
    shutil.which(speech.ESPEAK) is None, reason=f"espeak-ng not installed: {speech.INSTALL}"
)
TEXTS = ["is there a red shape?", "what color is the circle?"]


@needs_espeak
def test_files_are_written_and_readable(tmp_path):
    paths = speech.synthesize(TEXTS, speech.TRAIN_VOICE, tmp_path, progress=False)
    assert len(paths) == 2 and len(set(paths)) == 2
    for p in paths:
        assert p.parent == tmp_path and p.stat().st_size > 1000
        audio, sr = sf.read(p, dtype="float32")
        info = sf.info(p)
        assert sr == 22_050 and info.channels == 1 and info.subtype == "PCM_16"
        assert 0.5 < len(audio) / sr < 5 and np.abs(audio).max() > 0.05


@needs_espeak
def test_second_call_reuses_cache(tmp_path, monkeypatch):
    first = speech.synthesize(TEXTS, speech.TRAIN_VOICE, tmp_path, progress=False)
    for p in first:
        os.utime(p, (1_000_000, 1_000_000))

    def no_espeak(*args, **kwargs):
        raise AssertionError("espeak-ng ran although every file was cached")

    monkeypatch.setattr(speech.subprocess, "run", no_espeak)
    second = speech.synthesize(TEXTS, speech.TRAIN_VOICE, tmp_path, progress=False)
    assert second == first
    assert all(p.stat().st_mtime == 1_000_000 for p in second)


@needs_espeak
def test_cache_key_includes_voice_and_rate(tmp_path):
    text = TEXTS[:1]
    (a,) = speech.synthesize(text, speech.TRAIN_VOICE, tmp_path, progress=False)
    (b,) = speech.synthesize(text, speech.TEST_VOICE, tmp_path, progress=False)
    (slow,) = speech.synthesize(text, speech.TRAIN_VOICE, tmp_path, rate=100, progress=False)
    assert len({a, b, slow}) == 3
    wa, wb, ws = (sf.read(p, dtype="float32")[0] for p in (a, b, slow))
    assert len(wa) != len(wb) or not np.allclose(wa, wb)
    assert len(ws) > 1.3 * len(wa)  # 100 words a minute is much slower than the default 175


@needs_espeak
def test_duplicates_and_leading_dash(tmp_path):
    paths = speech.synthesize(["-one", "-one", "two"], speech.TRAIN_VOICE, tmp_path, progress=False)
    assert paths[0] == paths[1] != paths[2]
    assert len(list(tmp_path.glob("*.wav"))) == 2
    assert not list(tmp_path.glob("*.part"))


@needs_espeak
def test_voices():
    voices = speech.list_voices("en")
    assert "en-us" in voices and "en-gb" in voices
    assert speech.TRAIN_VOICE.split("+")[0] in voices
    assert speech.TEST_VOICE.split("+")[0] in voices
    assert "f3" in speech.list_variants()
    assert speech.TRAIN_VOICE != speech.TEST_VOICE


@needs_espeak
@pytest.mark.parametrize("voice", ["no-such-voice", "en-us+female3", "English"])
def test_unknown_voice_or_variant_is_refused(tmp_path, voice):
    # espeak-ng itself would fall back silently (to Norwegian, or to no variant).
    with pytest.raises(ValueError, match="unknown espeak-ng"):
        speech.synthesize(["hello"], voice, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


@needs_espeak
def test_espeak_failure_raises_media_error(tmp_path, monkeypatch):
    real_run = speech.subprocess.run

    def failing_run(cmd, **kwargs):
        if "-w" in cmd:
            return real_run(["sh", "-c", "echo boom >&2; exit 3"], **kwargs)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(speech.subprocess, "run", failing_run)
    with pytest.raises(MediaError, match="exit 3.*boom"):
        speech.synthesize(["hello"], speech.TRAIN_VOICE, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_empty_text_is_rejected(tmp_path):
    with pytest.raises(DataError, match="text 1"):
        speech.synthesize(["fine", "  "], speech.TRAIN_VOICE, tmp_path, progress=False)


def test_missing_espeak_names_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependency, match="apt-get install -y espeak-ng"):
        speech.synthesize(["hello"], speech.TRAIN_VOICE, tmp_path, progress=False)
    with pytest.raises(MissingDependency):
        speech.list_voices()
