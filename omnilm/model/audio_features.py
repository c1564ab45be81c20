"""Whisper log-mel features at the audio's real length, and how many encoder frames they become.

Whisper's feature extractor pads every clip to 30 s; here a clip is cut into window-sized pieces
(Whisper's 30 s), each piece normalized on its own as Whisper sees it, and padded only to a whole
number of conv strides, so a 10 s clip makes 500 encoder frames instead of 1,500.

`window_padded_log_mel` is the other choice (the audio encoder's `pad_to_window`): whole windows,
exactly as llama.cpp's Whisper preprocessing makes them, so a GGUF export hears what omnilm heard.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import spectrogram, window_function

from omnilm.errors import MediaError

# conv1 has stride 1 and conv2 stride 2: one encoder frame per two mel frames.
CONV_STRIDE = 2
# llama.cpp's mel power floor (mtmd-audio.cpp filter_params.mel_floor, 2^-24); Whisper's is 1e-10.
LLAMA_CPP_MEL_FLOOR = 2.0**-24


def window_frames(max_source_positions: int) -> int:
    """Mel frames in one encoder window (3,000 for Whisper's 1,500 positions: 30 s)."""
    return max_source_positions * CONV_STRIDE


def real_length_log_mel(extractor: WhisperFeatureExtractor, waveform, window: int) -> torch.Tensor:
    """16 kHz mono waveform -> log-mel [n_mels, F] at the real length (F even); `window` mel frames
    per encoder window."""
    wave = np.asarray(waveform, dtype=np.float32).reshape(-1)  # [N]
    if wave.size == 0:
        raise MediaError("cannot encode empty audio (0 samples)")
    samples = window * extractor.hop_length  # samples per window
    pieces = [wave[i: i + samples] for i in range(0, wave.size, samples)]
    return torch.cat([_log_mel(extractor, piece) for piece in pieces], dim=1)  # [n_mels, F]


def window_padded_log_mel(extractor: WhisperFeatureExtractor, waveform, window: int) -> torch.Tensor:
    """16 kHz mono waveform -> log-mel [n_mels, W * window] in whole windows, as llama.cpp's
    mtmd_audio_preprocessor_whisper (tools/mtmd/mtmd-audio.cpp) computes it: the clip is followed by
    one window of silence, the log-mel of all of it is normalized once (Whisper's max - 8 floor, over
    every frame, not per window), and only full windows are kept. So a clip shorter than a window is
    one 30-s window, and one of 29.99 s or more gets a second, as there. Unlike Whisper, llama.cpp
    floors the mel power at 2^-24, not 1e-10: silence then sits well above Whisper's max - 8."""
    wave = np.asarray(waveform, dtype=np.float32).reshape(-1)  # [N]
    if wave.size == 0:
        raise MediaError("cannot encode empty audio (0 samples)")
    hop = extractor.hop_length
    wave = np.pad(wave, (0, max(0, extractor.n_fft // 2 + 1 - wave.size)))  # llama.cpp's shortest input
    frames = wave.size // hop + window + 1  # llama.cpp's mel length for the clip + a window of silence
    # One hop more than llama.cpp's padding: Whisper's framing (centred, reflect-padded like
    # llama.cpp's) makes one frame more than it keeps.
    padded = np.pad(wave, (0, window * hop + hop))  # [N + (window + 1) * hop]
    log_mel = spectrogram(padded, window_function(extractor.n_fft, "hann"), frame_length=extractor.n_fft,
                          hop_length=hop, power=2.0, mel_filters=extractor.mel_filters, log_mel="log10",
                          mel_floor=LLAMA_CPP_MEL_FLOOR)[:, :frames]  # [n_mels, frames]
    log_mel = (np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0  # Whisper's normalization
    return torch.from_numpy(log_mel[:, : frames // window * window].astype(np.float32))  # [n_mels, W * window]


def _log_mel(extractor: WhisperFeatureExtractor, wave: np.ndarray) -> torch.Tensor:
    wave = np.pad(wave, (0, -wave.size % (extractor.hop_length * CONV_STRIDE)))
    features = extractor(wave, sampling_rate=extractor.sampling_rate, padding="do_not_pad", truncation=False,
                         return_tensors="np").input_features  # [1, n_mels, N / hop]
    return torch.from_numpy(features[0])


def encoder_frames(mel_frames: int) -> int:
    """Each window's conv2 (kernel 3, stride 2, padding 1) yields ceil(F_w / 2) frames; full
    windows are even, so a clip of F mel frames makes ceil(F / 2)."""
    return math.ceil(mel_frames / CONV_STRIDE)
