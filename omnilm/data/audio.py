"""Read audio from a file, bytes or an array into float32 mono at one sampling rate.

soundfile (libsndfile >= 1.1) decodes wav, flac, ogg/vorbis/opus and mp3 without ffmpeg;
soxr resamples. Both are small numpy-only wheels, unlike torchaudio/librosa (see env notes).
Every failure raises MediaError naming the file, so a bad row in a dataset of thousands
can be found and fixed.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from omnilm.errors import MediaError

if TYPE_CHECKING:
    import soundfile as sf

# Every waveform inside omnilm is mono at this rate (Whisper's); a bare array in a Sample is too.
SAMPLING_RATE = 16000
SUPPORTED = "wav, flac, mp3, ogg (anything libsndfile reads)"
# libsndfile's log notes a chunk whose declared size disagrees with the file: "data : 32000 (should be 1000)".
DECLARED_SIZE = re.compile(r"^\s*(\S+)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
UNKNOWN_SIZE = 0xFFFFFFFF  # "length unknown", written by tools that stream WAV into a pipe
UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count when the header gives none
MAX_SAMPLING_RATE = 384_000  # decoding work is seconds x rate: refuse absurd declared rates
BLOCK_SAMPLES = 1 << 20  # samples (frames x channels) decoded at a time


def load_sample_audio(item: Any, max_seconds: float | None = None) -> np.ndarray:
    """One audio item of a Sample: anything `load_audio` reads, or a bare waveform, which the
    Sample contract says is mono at SAMPLING_RATE."""
    return load_audio((item, SAMPLING_RATE) if isinstance(item, np.ndarray) else item, max_seconds=max_seconds)


def load_audio(
    source: Any,
    *,
    sampling_rate: int = SAMPLING_RATE,
    max_seconds: float | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Return the audio in `source` as a float32 mono waveform at `sampling_rate`.

    `source` is a path (str / PathLike), raw file bytes, or a `(waveform, rate)` tuple where
    the waveform is [N] or 2-D with channels on the shorter axis (soundfile's [N, C] or
    torch's [C, N]); integer waveforms are scaled to [-1, 1]. `name` labels the source in
    error messages (defaults to the path, or "<bytes>" / "<array>").
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or str(source)
        data, rate = _read_file(Path(source), label, max_seconds)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data, rate = _read_bytes(bytes(source), label, max_seconds)
    elif isinstance(source, tuple) and len(source) == 2:
        label = name or "<array>"
        data, rate = _from_array(source[0], source[1], label)
    else:
        raise MediaError(
            f"{name or 'audio'}: cannot read a {type(source).__name__}; "
            "pass a path, file bytes, or a (waveform, sampling_rate) tuple"
        )
    return _finish(data, rate, label, sampling_rate, max_seconds)


def _read_file(path: Path, label: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise MediaError(f"audio file not found: {label}")
    if path.stat().st_size == 0:
        raise MediaError(f"audio file {label} is empty (0 bytes)")
    # Open the file ourselves: given a path, libsndfile reports some non-audio files as
    # "File does not exist", which would send the user looking in the wrong place.
    with open(path, "rb") as f:
        return _decode(f, label, max_seconds)


def _read_bytes(data: bytes, label: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not data:
        raise MediaError(f"audio {label} is empty (0 bytes)")
    return _decode(io.BytesIO(data), label, max_seconds)


def _decode(f: BinaryIO, label: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """-> ([N, 1] mono float32, rate)."""
    import soundfile as sf  # here, not at import: training on images needs no audio libraries

    try:
        with sf.SoundFile(f) as snd:
            _check_header(snd, label, max_seconds)
            return _read_mono(snd), snd.samplerate
    except sf.LibsndfileError as err:
        reason = getattr(err, "error_string", str(err))
        if "does not exist" in reason:
            # libsndfile's catch-all for streams its mp3 decoder rejects; the file exists.
            reason = "not a readable audio stream"
        raise MediaError(
            f"cannot decode audio {label}: {reason} (corrupt or not an audio file?); "
            f"supported formats: {SUPPORTED}"
        ) from err
    except (RuntimeError, EOFError, ValueError) as err:
        # Anything else raised while decoding (soundfile wraps several codec libraries):
        # still name the file.
        raise MediaError(f"cannot decode audio {label}: {err} (corrupt file?)") from err


def _check_header(snd: sf.SoundFile, label: str, max_seconds: float | None) -> None:
    """Refuse from the header, before decoding: an hour-long file fails fast instead of filling memory."""
    if not 0 < snd.samplerate <= MAX_SAMPLING_RATE:
        raise MediaError(f"audio {label} declares a sampling rate of {snd.samplerate} Hz; "
                         f"at most {MAX_SAMPLING_RATE} Hz is read")
    if snd.frames >= UNKNOWN_LENGTH:
        raise MediaError(f"audio {label} does not say how long it is (a FLAC written as a stream?); "
                         "re-encode it, e.g. ffmpeg -i IN OUT.wav")
    if snd.frames == 0:
        raise MediaError(f"audio {label} has no audio data: its header declares 0 bytes of sound")
    if max_seconds is not None:
        _check_length(snd.frames, snd.samplerate, label, max_seconds)
    _check_declared_sizes(snd, label)


def _read_mono(snd: sf.SoundFile) -> np.ndarray:
    """Decode block by block, mixing each block down as it comes: memory holds one mono copy
    (plus a block), however many channels the file declares."""
    block_frames = max(1, BLOCK_SAMPLES // snd.channels)
    blocks = [block.mean(axis=1, keepdims=True)
              for block in snd.blocks(block_frames, dtype="float32", always_2d=True)]  # [n, C] -> [n, 1]
    return np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)


def _from_array(waveform: Any, rate: Any, label: str) -> tuple[np.ndarray, int]:
    try:
        data = np.asarray(waveform)
        rate = int(rate)
    except (TypeError, ValueError) as err:
        raise MediaError(f"audio {label}: expected (waveform, sampling_rate), got {err}") from err
    if rate <= 0:
        raise MediaError(f"audio {label}: sampling rate must be positive, got {rate}")
    if np.issubdtype(data.dtype, np.integer):
        # PCM integers: scale so full scale maps to 1.0 like soundfile's float output.
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    elif not np.issubdtype(data.dtype, np.floating):
        raise MediaError(f"audio {label}: waveform dtype {data.dtype} is not numeric")
    if data.ndim == 1:
        data = data[:, None]  # [N, 1]
    elif data.ndim == 2:
        if data.shape[0] < data.shape[1]:
            data = data.T  # channels are the short axis: [C, N] -> [N, C]
    else:
        raise MediaError(f"audio {label}: waveform must be 1-D or 2-D, got shape {data.shape}")
    return data.astype(np.float32, copy=False), rate


def _finish(
    data: np.ndarray, rate: int, label: str, sampling_rate: int, max_seconds: float | None
) -> np.ndarray:
    if data.shape[0] == 0:
        raise MediaError(f"audio {label} is empty (0 samples)")
    if max_seconds is not None:
        _check_length(data.shape[0], rate, label, max_seconds)
    if not np.isfinite(data).all():
        raise MediaError(f"audio {label} contains NaN or infinite samples")
    _check_not_random(data, label)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # [N]
    if rate != sampling_rate:
        import soxr

        mono = soxr.resample(mono, rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_length(frames: int, rate: int, label: str, max_seconds: float) -> None:
    seconds = frames / rate
    if seconds > max_seconds:
        raise MediaError(
            # The limit is a server's or a recipe's (model.audio.max_seconds): only trimming is the sender's to do.
            f"audio {label} is {seconds:.1f} s long; the limit is {max_seconds:g} s: use a shorter clip"
        )


def _check_declared_sizes(snd: sf.SoundFile, label: str) -> None:
    """A header that declares more or fewer bytes than the file holds (a cut-off download, a
    header pasted onto other bytes) is corrupt, though libsndfile reads what bytes there are."""
    for chunk, declared, actual in DECLARED_SIZE.findall(snd.extra_info):
        if int(declared) != UNKNOWN_SIZE:
            raise MediaError(f"audio {label} is corrupt: its header declares {declared} bytes of {chunk!r} "
                             f"but the file holds {actual} (truncated or not audio?)")


def _check_not_random(data: np.ndarray, label: str) -> None:
    """Random bytes under a valid header decode to samples spread evenly over the whole range
    [-1, 1]; recorded sound clusters near zero. Flagged when each of 16 equal bins holds
    1/16 of the samples to within 2 points (too few samples say nothing either way)."""
    if data.size < 4000:
        return
    counts, _ = np.histogram(data, bins=16, range=(-1.0, 1.0))
    if np.abs(counts / data.size - 1 / 16).max() < 0.02:
        raise MediaError(f"audio {label} looks like random bytes, not sound: its samples are spread "
                         "evenly over the full range (corrupt file?)")
