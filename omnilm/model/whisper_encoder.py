"""Frozen Whisper encoder as an audio feature extractor for the native audio route.

Log-mel at the audio's real length (the processor's, omnilm.model.audio_features) -> Whisper
encoder -> one feature vector per 20 ms, so a 10 s clip makes 500 frames instead of the 1,500 a
padded 30 s window would (the audio projector then stacks k of them into one LLM token:
omnilm.model.projector.FrameStack).

transformers' WhisperEncoder.forward refuses anything but exactly 3,000 mel frames, so the
same submodules (conv1, conv2, embed_positions, layers, layer_norm) are applied here
directly; with exactly 3,000 frames this reproduces WhisperEncoder.forward exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omnilm.errors import MediaError, OmniError
from omnilm.model.audio_features import encoder_frames, window_frames


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder producing one feature vector per encoder frame of a real-length log-mel.

    Build with `from_pretrained` (weights from a folder or hub id) or `from_config` (tiny
    random encoders for tests); the constructor itself only wires already-built parts.
    """

    modality = "audio"

    def __init__(self, encoder: WhisperEncoder):
        super().__init__()
        self.encoder = encoder
        self.hidden_size = encoder.config.d_model
        # One encoder window covers max_source_positions encoder frames (30 s for Whisper).
        self.window_frames = window_frames(encoder.config.max_source_positions)  # mel frames

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: WhisperConfig) -> "WhisperAudioEncoder":
        """A randomly initialised encoder (tests, shape checks)."""
        return cls(WhisperEncoder(config).eval())

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: torch.dtype | None = None) -> "WhisperAudioEncoder":
        """Load the encoder half of a Whisper checkpoint (hub id such as
        "openai/whisper-small", or a local folder).

        WhisperEncoder.from_pretrained on a full Whisper checkpoint silently leaves every
        weight random in transformers 5.x (the keys carry a "model.encoder." prefix), so the
        encoder's tensors are read from the safetensors/bin files and loaded strictly.
        """
        config = WhisperConfig.from_pretrained(name_or_path)
        state = _encoder_state_dict(name_or_path)
        encoder = WhisperEncoder(config)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise OmniError(
                f"{name_or_path}: encoder weights do not fit WhisperEncoder "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        if dtype is not None:
            encoder = encoder.to(dtype)
        return cls(encoder.eval())

    def save_pretrained(self, path) -> None:
        """A folder `from_pretrained` reads back: encoder weights and config (the processor saves
        the feature extractor)."""
        self.encoder.save_pretrained(path)

    # ---- encoding ------------------------------------------------------------------------

    def forward(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode log-mels of any lengths: list of [n_mels, F_i] -> list of [T_i, hidden_size].

        All windows of all clips run as one padded batch; padded positions are zeroed
        after conv1 and masked out of attention, so results match one-by-one encoding.
        """
        if not mels:
            return []
        windows, owners = [], []
        for i, mel in enumerate(mels):
            if mel.dim() != 2 or mel.shape[0] != self.encoder.config.num_mel_bins:
                raise MediaError(
                    f"audio {i}: expected log-mel [{self.encoder.config.num_mel_bins}, F], "
                    f"got {tuple(mel.shape)}"
                )
            if mel.shape[1] == 0:
                raise MediaError(f"audio {i}: log-mel has 0 frames")
            for piece in mel.split(self.window_frames, dim=1):
                windows.append(piece)
                owners.append(i)
        encoded = self._encode_windows(windows)  # list of [frames_w, D]
        per_clip: list[list[torch.Tensor]] = [[] for _ in mels]
        for owner, frames in zip(owners, encoded):
            per_clip[owner].append(frames)
        return [torch.cat(parts, dim=0) for parts in per_clip]

    def _encode_windows(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        enc = self.encoder
        param = enc.conv1.weight
        lengths = [w.shape[1] for w in windows]
        longest = max(lengths)
        mel = torch.stack([F.pad(w, (0, longest - w.shape[1])) for w in windows])  # [W, M, F]
        mel = mel.to(device=param.device, dtype=param.dtype)
        ragged = any(n != longest for n in lengths)

        x = F.gelu(enc.conv1(mel))  # [W, D, F]
        if ragged:
            # Zero what conv1 made of the padding, so conv2 sees the same zeros at a clip's
            # end as it does for the clip alone (conv padding is zeros too).
            keep = _length_mask(lengths, longest, x.device)  # [W, F]
            x = x * keep[:, None, :].to(x.dtype)
        x = F.gelu(enc.conv2(x))  # [W, D, F/2]
        x = x.permute(0, 2, 1)  # [W, T, D]
        frames = x.shape[1]
        x = x + enc.embed_positions.weight[:frames]  # [W, T, D]
        x = F.dropout(x, p=enc.dropout, training=enc.training)

        frame_lengths = [encoder_frames(n) for n in lengths]
        mask = _attention_mask(frame_lengths, frames, x.dtype, x.device) if ragged else None
        for layer in enc.layers:
            x = layer(x, mask)  # [W, T, D]
        x = enc.layer_norm(x)  # [W, T, D]
        return [x[i, :n] for i, n in enumerate(frame_lengths)]


def _length_mask(lengths: list[int], longest: int, device) -> torch.Tensor:
    steps = torch.arange(longest, device=device)  # [F]
    return steps[None, :] < torch.tensor(lengths, device=device)[:, None]  # [W, F]


def _attention_mask(lengths: list[int], frames: int, dtype, device) -> torch.Tensor:
    """Additive mask [W, 1, T, T] hiding padded keys (what eager and sdpa attention accept)."""
    keep = _length_mask(lengths, frames, device)  # [W, T]
    mask = torch.zeros(len(lengths), 1, frames, frames, dtype=dtype, device=device)
    return mask.masked_fill(~keep[:, None, None, :], torch.finfo(dtype).min)


# ---- checkpoint reading ------------------------------------------------------------------

# Key prefixes of the encoder inside the checkpoints Whisper ships in: a full
# WhisperForConditionalGeneration, a bare WhisperModel, or a saved WhisperEncoder.
_ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")


def _encoder_state_dict(name_or_path: str) -> dict[str, torch.Tensor]:
    files = _weight_files(name_or_path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read_weights(file))
    for prefix in _ENCODER_PREFIXES:
        if f"{prefix}conv1.weight" in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise OmniError(
        f"{name_or_path}: no Whisper encoder weights found (looked for 'conv1.weight' under "
        f"{[p or '<no prefix>' for p in _ENCODER_PREFIXES]} in {[str(f) for f in files]})"
    )


def _weight_files(name_or_path: str) -> list[Path]:
    """Resolve the checkpoint's weight files locally (downloading from the hub if needed)."""
    from transformers.utils import cached_file

    def get(filename: str) -> str | None:
        return cached_file(
            name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )

    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if path := get(single):
            return [Path(path)]
        if index_path := get(index):
            shards = sorted(set(json.loads(Path(index_path).read_text())["weight_map"].values()))
            return [Path(get(shard) or shard) for shard in shards]
    raise OmniError(
        f"{name_or_path}: no model.safetensors or pytorch_model.bin found "
        "(is this a Whisper checkpoint folder or hub id, and is the hub reachable?)"
    )


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise OmniError(f"weight file listed in the index is missing: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def build_whisper_encoder(cfg, seed: int) -> WhisperAudioEncoder:
    """Registry entry: a recipe's EncoderConfig -> encoder (random_config for tiny tests)."""
    if cfg.random_config is not None:
        torch.manual_seed(seed)
        return WhisperAudioEncoder.from_config(WhisperConfig(**cfg.random_config))
    return WhisperAudioEncoder.from_pretrained(cfg.name_or_path)
