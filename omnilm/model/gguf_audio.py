"""The audio half of the GGUF mmproj: omnilm's Whisper encoder + ultravox projector as llama.cpp's
`ultravox` audio projector (tools/mtmd/clip.cpp, models/whisper-enc.cpp) loads and runs them.

`check_audio` refuses what llama.cpp would compute differently; `write_audio` adds the
`clip.audio.*` hyperparameters and the `a.*` / `mm.a.*` tensors to the mmproj writer (the
coordinator's writer sets `clip.has_audio_encoder` and `clip.audio.projector_type`).
What llama.cpp does with a clip, and so what omnilm must have done for the same tokens:
- each clip is padded to whole 30-s windows (3,000 mel frames, hard-coded), normalized once over
  the clip and a window of silence with the mel power floored at 2^-24 (Whisper: 1e-10), and each
  window is its own encoder run (`pad_to_window`, omnilm.model.audio_features);
- the encoder's 1,500 frames a window are stacked k at a time, the tail zero-padded, and the
  count it expects is ceil(3000 / k) // 2 tokens: for k where that is not ceil(1500 / k)
  (k = 7, 8, 11, ...) llama.cpp aborts ("Invalid number of output tokens");
- llama.cpp itself places no token before or after an ultravox clip; an end_token_id is written
  after each media marker by the exported chat template (omnilm.model.gguf_text).
"""
from __future__ import annotations

import math

import gguf
import torch

from omnilm.model.gguf_parts import add_tensor, refuse
from omnilm.model.projector import FrameStack, UltravoxProjector

SAMPLE_RATE = 16000  # llama.cpp's Whisper preprocessing: 16 kHz, n_fft 400, hop 160, 30-s chunks
WINDOW_POSITIONS = 1500  # encoder frames in llama.cpp's fixed 3,000-frame chunk
HOP = 160
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which Whisper's layers use
PROJECTOR_TYPE = gguf.VisionProjectorType.ULTRAVOX  # clip.audio.projector_type (set by gguf_format)


def check_audio(model) -> None:
    """Raise NotExpressibleInGGUF for the first audio setting llama.cpp cannot run as trained."""
    settings = model.config.encoder("audio")
    if settings is None:
        return
    if settings.type != "whisper":
        raise refuse("model.audio.type", f"llama.cpp's mmproj runs Whisper encoders only, not {settings.type}", "whisper")
    if settings.projector.type != "ultravox":
        raise refuse("model.audio.projector.type", f"llama.cpp runs a Whisper encoder's output through its own "
                     f"audio projectors, of which omnilm trains ultravox, not {settings.projector.type}", "ultravox")
    if settings.projector.tokens_per_feature != 1:
        raise refuse("model.audio.projector.tokens_per_feature", "llama.cpp's ultravox makes one token per "
                     f"stacked vector, not {settings.projector.tokens_per_feature}", "1")
    if not settings.pad_to_window:
        raise refuse("model.audio.pad_to_window", "llama.cpp pads every clip to whole 30-s windows and the model "
                     "heard real-length audio, so its audio tokens (and their number) would differ",
                     "pad_to_window: true, then train the projector with it")
    whisper = model.encoders["audio"].encoder.config
    if whisper.max_source_positions != WINDOW_POSITIONS:
        raise refuse("the Whisper encoder's max_source_positions", "llama.cpp cuts audio into 30-s chunks of "
                     f"{WINDOW_POSITIONS} encoder frames, not {whisper.max_source_positions}", str(WINDOW_POSITIONS))
    if whisper.activation_function != "gelu":
        raise refuse("the Whisper encoder's activation_function", "llama.cpp's Whisper runs exact (erf) GELU, "
                     f"not {whisper.activation_function}", "gelu")
    _check_stack(settings.stack_frames, settings.max_seconds)


def _check_stack(k: int, max_seconds: float) -> None:
    if not _llama_cpp_counts(k):
        raise refuse("model.audio.stack_frames", f"llama.cpp's graph makes ceil({WINDOW_POSITIONS} / {k}) tokens a "
                     f"window but expects ceil({2 * WINDOW_POSITIONS} / {k}) // 2, and aborts", str(_nearest_divisor(k)))
    # A second window starts at 29.99 s (llama.cpp's chunking); each window's tail is padded on its own
    # there, while omnilm stacks a clip's frames across windows: the same only when k divides 1,500.
    spans_windows = max_seconds * SAMPLE_RATE >= (2 * WINDOW_POSITIONS - 1) * HOP
    if spans_windows and WINDOW_POSITIONS % k:
        raise refuse("model.audio.stack_frames", f"{k} does not divide a window's {WINDOW_POSITIONS} frames, so a "
                     f"clip over 29.99 s (max_seconds is {max_seconds:g}) would be stacked differently",
                     f"{_nearest_divisor(k)}, or max_seconds below 29.99")


def _llama_cpp_counts(k: int) -> bool:
    """Whether llama.cpp's graph (ceil(1500 / k) rows) agrees with its token count (clip.cpp)."""
    return math.ceil(WINDOW_POSITIONS / k) == math.ceil(2 * WINDOW_POSITIONS / k) // 2


def _nearest_divisor(k: int) -> int:
    return min((d for d in range(1, WINDOW_POSITIONS + 1) if WINDOW_POSITIONS % d == 0), key=lambda d: (abs(d - k), d))


def write_audio(writer: gguf.GGUFWriter, model, llm_width: int, weight_type: str = "f32") -> None:
    """Add the audio encoder + projector to an mmproj (arch "clip") writer: hyperparameters and
    tensors with clip.cpp's names and layouts (the settings were checked by check_audio first)."""
    settings = model.config.encoder("audio")
    whisper = model.encoders["audio"].encoder
    projector = model.projectors["audio"]
    inner = projector.inner if isinstance(projector, FrameStack) else projector
    if not isinstance(inner, UltravoxProjector):  # check_audio read the settings; these are the weights
        raise refuse("model.audio.projector", f"the audio projector is a {type(inner).__name__}", "ultravox")
    if inner.linear_2.out_features != llm_width:
        raise refuse("the audio projector", f"it makes {inner.linear_2.out_features}-wide embeddings for an LLM "
                     f"{llm_width} wide", "a model built with its own LLM")
    config = whisper.config

    writer.add_audio_projection_dim(llm_width)
    writer.add_audio_embedding_length(config.d_model)
    writer.add_audio_feed_forward_length(config.encoder_ffn_dim)
    writer.add_audio_block_count(config.encoder_layers)
    writer.add_audio_head_count(config.encoder_attention_heads)
    writer.add_audio_attention_layernorm_eps(LAYER_NORM_EPS)
    writer.add_audio_num_mel_bins(config.num_mel_bins)
    writer.add_audio_stack_factor(settings.stack_frames if isinstance(projector, FrameStack) else 1)

    # gguf-py maps conv1 / conv2 as if they were blocks 1 and 2 ("audio_tower.conv{bid}"): a map of
    # fewer than 3 blocks would not know conv2.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(config.encoder_layers, 3))
    # The Hugging Face names gguf-py's TensorNameMap knows for Whisper and Ultravox's projector.
    tensors = {f"audio_tower.{k}": v for k, v in whisper.state_dict().items()}
    tensors.update({f"audio.multi_modal_projector.{k}": v for k, v in inner.state_dict().items()})
    for hf_name, tensor in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise refuse("the audio encoder", f"llama.cpp has no tensor for {hf_name}", "a transformers WhisperEncoder")
        if hf_name.endswith(("conv1.bias", "conv2.bias")):
            tensor = tensor.unsqueeze(-1)  # [D] -> [D, 1]: clip.cpp adds it to the conv output [T, D]
        add_tensor(writer, name, tensor, tensor_type(name, tensor, weight_type))



def tensor_type(name: str, tensor: torch.Tensor, weight_type: str) -> str:
    """Matrices in `weight_type` (f32 / f16); norms and biases f32; conv kernels f16, as llama.cpp's
    converter writes them (ggml's conv_1d runs its im2col in F16 whatever the kernel's type)."""
    if ".conv1d." in name and name.endswith(".weight"):
        return "f16"
    if tensor.dim() < 2 or tensor.shape[-1] == 1:  # norms and biases
        return "f32"
    return weight_type
