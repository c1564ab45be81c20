"""WhisperAudioEncoder on a tiny random Whisper: lengths, windows, exactness; the audio projector's
frame stacking."""
import math

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from omnilm.errors import MediaError, MissingDependency, OmniError
from omnilm.core.components import llm_tokens
from omnilm.model.projector import FrameStack, build_projector, stack_frames
from omnilm.config import EncoderConfig
from omnilm.model.preprocessors import whisper_preprocessor
from omnilm.model.audio_features import encoder_frames, real_length_log_mel
from omnilm.model.whisper_encoder import WhisperAudioEncoder

SR = 16000


def tiny_config(**overrides) -> WhisperConfig:
    values = dict(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    values.update(overrides)
    return WhisperConfig(**values)


@pytest.fixture(scope="module")
def encoder() -> WhisperAudioEncoder:
    torch.manual_seed(0)
    return WhisperAudioEncoder.from_config(tiny_config())


def log_mel(encoder: WhisperAudioEncoder, wave) -> torch.Tensor:
    """What the processor feeds the encoder: Whisper's log-mel at the real length, cut by its window."""
    extractor = WhisperFeatureExtractor(feature_size=encoder.encoder.config.num_mel_bins)
    return real_length_log_mel(extractor, wave, encoder.window_frames)  # [n_mels, F]


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.01, 0.5, 1.0, 2.345, 10.0, 29.99, 30.0])
def test_token_count_follows_real_length(encoder, seconds):
    mel = log_mel(encoder, noise(seconds))
    # 10 ms a mel frame, padded only to an even count (conv2 stride 2)
    expected_mel = 2 * math.ceil(seconds * SR / 320)
    assert mel.shape == (80, expected_mel)
    expected_frames = expected_mel // 2
    assert encoder_frames(mel.shape[-1]) == expected_frames
    assert llm_tokens(expected_frames, stack=8) == math.ceil(expected_mel / 2 / 8)  # what the projector makes
    with torch.no_grad():
        (out,) = encoder([mel])
    assert out.shape == (expected_frames, encoder.hidden_size)
    assert encoder.hidden_size == 32 and encoder.modality == "audio"


def test_stacking_puts_k_consecutive_frames_side_by_side(encoder):
    mel = log_mel(encoder, noise(1.23))  # 124 mel -> 62 frames -> 8 tokens (6 pad)
    k, d = 8, encoder.hidden_size
    with torch.no_grad():
        (frames,) = encoder([mel])  # [62, D]
    stacked = stack_frames(frames, k)  # [8, 8 * D]
    assert frames.shape == (62, d) and stacked.shape == (8, k * d)
    for t in range(62):
        torch.testing.assert_close(stacked[t // k, (t % k) * d : (t % k + 1) * d], frames[t])
    assert torch.all(stacked[-1, (62 % k) * d :] == 0)  # zero-padded tail
    assert torch.equal(stack_frames(frames, 1), frames)


def test_frame_stack_projector_pads_each_clip_on_its_own():
    torch.manual_seed(0)
    projector = build_projector("linear", 4, 6, stack=3)
    assert isinstance(projector, FrameStack) and projector.inner.weight.shape == (6, 12)
    clips = [torch.randn(5, 4), torch.randn(7, 4)]  # 2 + 3 tokens: each tail is padded apart
    with torch.no_grad():
        out = projector(clips)
        expected = torch.cat([projector.inner(stack_frames(c, 3)) for c in clips])
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, expected)


def test_exactly_one_window_matches_transformers_forward(encoder):
    mel = log_mel(encoder, noise(30.0, seed=1))
    assert mel.shape[1] == 3000
    with torch.no_grad():
        reference = encoder.encoder(mel[None]).last_hidden_state[0]  # [1500, D]
        ours = encoder._encode_windows([mel])[0]
    assert torch.equal(ours, reference)


def test_long_audio_is_encoded_in_30s_windows(encoder):
    wave = noise(65.2, seed=2)
    mel = log_mel(encoder, wave)
    assert mel.shape[1] == 6520
    # each 30 s piece of the waveform gets its own mel, as Whisper sees it
    torch.testing.assert_close(mel[:, :3000], log_mel(encoder, wave[: 30 * SR]))
    torch.testing.assert_close(mel[:, 3000:6000], log_mel(encoder, wave[30 * SR : 60 * SR]))
    with torch.no_grad():
        frames = encoder._encode_windows([mel[:, :3000], mel[:, 3000:6000], mel[:, 6000:]])
        (out,) = encoder([mel])
    whole = torch.cat(frames)  # [1500 + 1500 + 260, D]
    assert whole.shape[0] == 3260
    assert out.shape == (3260, encoder.hidden_size) == (encoder_frames(mel.shape[-1]), 32)
    torch.testing.assert_close(out, whole)


def test_batch_of_different_lengths_equals_one_by_one(encoder):
    mels = [log_mel(encoder, noise(s, seed=i)) for i, s in enumerate([1.3, 4.0, 0.7, 31.5])]
    with torch.no_grad():
        batched = encoder(mels)
        single = [encoder([m])[0] for m in mels]
    for b, s in zip(batched, single):
        assert b.shape == s.shape
        torch.testing.assert_close(b, s, atol=1e-5, rtol=1e-5)


def test_odd_mel_length_and_bad_input(encoder):
    mel = log_mel(encoder, noise(1.0))[:, :99]  # odd length from an outside source
    with torch.no_grad():
        (out,) = encoder([mel])
    assert out.shape[0] == encoder_frames(mel.shape[-1]) == 50
    with pytest.raises(MediaError, match="empty"):
        log_mel(encoder, np.zeros(0, dtype=np.float32))
    with pytest.raises(MediaError, match=r"audio 1: expected log-mel \[80, F\]"):
        encoder([mel, torch.zeros(40, 10)])


@pytest.mark.parametrize("kind", ["generation", "model", "encoder"])
def test_from_pretrained_reads_encoder_weights(tmp_path, kind):
    torch.manual_seed(1)
    config = tiny_config()
    full = WhisperForConditionalGeneration(config)
    source = {"generation": full, "model": full.model, "encoder": full.model.encoder}[kind]
    source.save_pretrained(tmp_path)
    loaded = WhisperAudioEncoder.from_pretrained(str(tmp_path))
    assert loaded.hidden_size == 32
    for name, tensor in full.model.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[name], tensor), name
    # no preprocessor_config.json in these folders: the processor's extractor follows num_mel_bins
    assert whisper_preprocessor(EncoderConfig(type="whisper", name_or_path=str(tmp_path))).part.feature_size == 80


def test_from_pretrained_errors_name_the_folder(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(OmniError, match=f"{tmp_path}: no model.safetensors"):
        WhisperAudioEncoder.from_pretrained(str(tmp_path))
    torch.save({"decoder.x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(OmniError, match="no Whisper encoder weights"):
        WhisperAudioEncoder.from_pretrained(str(tmp_path))


def test_128_mel_config():
    torch.manual_seed(0)
    enc = WhisperAudioEncoder.from_config(tiny_config(num_mel_bins=128))
    mel = log_mel(enc, noise(0.5))
    assert mel.shape == (128, 50)
    with torch.no_grad():
        assert enc([mel])[0].shape == (25, 32)


def test_real_tiny_en_weights_match_ctranslate2(tmp_path, monkeypatch):
    """Loads the zoo's converted tiny.en folder; at one full window our path reproduces
    CTranslate2's own encoder (max |diff| 2.6e-5 on speech, ~1e-3 on noise)."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install ctranslate2==4.8.5")
    from omnilm.zoo import whisper_ct2

    monkeypatch.setenv("OMNILM_CACHE", str(tmp_path))
    try:
        folder, ct2_dir = whisper_ct2.whisper_encoder_folder(), whisper_ct2.whisper_ct2_dir()
    except MissingDependency as err:
        pytest.skip(str(err))
    enc = WhisperAudioEncoder.from_pretrained(str(folder))
    assert enc.hidden_size == 384
    mel = log_mel(enc, noise(30.0, seed=3))
    engine = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32")
    reference = np.array(engine.encode(ctranslate2.StorageView.from_array(mel[None].numpy())))
    with torch.no_grad():
        ours = enc._encode_windows([mel])[0].numpy()  # [1500, 384]
    diff = np.abs(ours - reference[0])
    # Two float32 engines: almost all values agree to ~1e-5; a few on noise input to ~1e-3.
    assert diff.mean() < 1e-4 and diff.max() < 1e-2, (diff.mean(), diff.max())
