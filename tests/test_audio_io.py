"""load_audio: formats, resampling, channel mixing, and errors that name the file."""
import numpy as np
import pytest
import soundfile as sf
import torch

from omnilm.data.audio import load_audio
from omnilm.errors import MediaError


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)])


FORMATS = [
    ("wav", "WAV", "PCM_16"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS)
def test_formats_decode_to_16k_mono(tmp_path, ext, fmt, subtype):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")
    path = tmp_path / f"tone.{ext}"
    sf.write(path, sine(440, 16000), 16000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # Lossy codecs add encoder delay / frame padding: allow a few frames either way.
    assert abs(wave.size - 16000) < 0.1 * 16000
    assert abs(peak_hz(wave, 16000) - 440) < 3


def test_resample_44k_keeps_frequency(tmp_path):
    path = tmp_path / "tone44k.wav"
    sf.write(path, sine(1000, 44100), 44100, subtype="FLOAT")
    wave = load_audio(path, sampling_rate=16000)
    assert wave.size == 16000
    assert abs(peak_hz(wave, 16000) - 1000) < 2
    # Away from the edges the resampled signal is the same sine sampled at 16 kHz.
    expected = sine(1000, 16000)
    mid = slice(200, -200)
    assert np.corrcoef(wave[mid], expected[mid])[0, 1] > 0.999


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = sine(300, 16000), sine(700, 16000, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(path)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)


def test_bytes_and_array_inputs(tmp_path):
    tone = sine(440, 8000)
    path = tmp_path / "tone8k.wav"
    sf.write(path, tone, 8000, subtype="FLOAT")
    from_file = load_audio(path)
    np.testing.assert_allclose(load_audio(path.read_bytes()), from_file)
    np.testing.assert_allclose(load_audio((tone, 8000)), from_file, atol=1e-6)
    # torch-style [C, N] and int16 PCM
    stereo = torch.from_numpy(np.stack([tone, tone]))  # [2, N]
    np.testing.assert_allclose(load_audio((stereo, 8000)), from_file, atol=1e-6)
    pcm = (tone * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio((pcm, 8000)), from_file, atol=1e-3)


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "silent_row.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match=r"silent_row\.wav.*empty"):
        load_audio(path)
    header_only = tmp_path / "no_frames.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"no_frames\.wav has no audio data: its header declares 0 bytes"):
        load_audio(header_only)


def test_corrupt_and_non_audio_files_name_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 16000), 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # header cut short
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio at all\n" * 50)
    for path in (truncated, garbage, text):
        with pytest.raises(MediaError, match=path.name.replace(".", r"\.")) as err:
            load_audio(path)
        assert "cannot decode" in str(err.value)


def test_missing_file_and_name_override(tmp_path):
    with pytest.raises(MediaError, match=r"not found: .*nowhere\.wav"):
        load_audio(tmp_path / "nowhere.wav")
    with pytest.raises(MediaError, match="row 17"):
        load_audio(b"not audio", name="row 17")
    with pytest.raises(MediaError, match="NaN"):
        load_audio((np.array([0.0, np.nan, 0.1]), 16000))


def test_over_long_audio_names_file_and_limit(tmp_path):
    path = tmp_path / "lecture.wav"
    sf.write(path, sine(440, 16000, seconds=3.0), 16000)
    with pytest.raises(MediaError, match=r"lecture\.wav is 3\.0 s long; the limit is 2 s"):
        load_audio(path, max_seconds=2)
    with pytest.raises(MediaError, match=r"<array> is 3\.0 s long; the limit is 2\.5 s"):
        load_audio((sine(440, 16000, seconds=3.0), 16000), max_seconds=2.5)
    assert load_audio(path, max_seconds=3.0).size == 48000


def test_garbled_mp3_message_does_not_claim_the_file_is_missing(tmp_path):
    if "MPEG_LAYER_III" not in sf.available_subtypes("MP3"):
        pytest.skip("this libsndfile cannot write mp3")
    path = tmp_path / "garbled.mp3"
    sf.write(path, sine(440, 16000, seconds=3.0), 16000, format="MP3", subtype="MPEG_LAYER_III")
    data = bytearray(path.read_bytes())
    data[300:2000] = bytes(1700)  # libmpg123 gives up resyncing
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"garbled\.mp3: not a readable audio stream") as err:
        load_audio(path)
    assert "does not exist" not in str(err.value)
