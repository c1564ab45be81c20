"""`omnilm export`: a self-contained folder that loads without peft or bitsandbytes.

LoRA is merged into the LLM after dequantizing a 4-bit base: W = dequant(W_nf4) + B @ A * scale,
so the exported weights compute what the QLoRA model computed during training.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from omnilm.config import save_recipe
from omnilm.errors import ConfigError
from omnilm.model.build import RECIPE_FILE
from omnilm.model.paths import LOCAL
from omnilm.model.checkpoint import WEIGHTS, atomic_save


def _dense_weight(linear) -> torch.Tensor:
    """A Linear's weight as a plain float tensor, dequantizing bitsandbytes 4-bit storage."""
    weight = linear.weight
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()  # [out, in]
    return weight.detach().float()


def merged_state_dict(llm) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(the plain HF model inside, its state dict with LoRA merged and 4-bit weights dequantized)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base = llm.get_base_model() if isinstance(llm, PeftModel) else llm
    out: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = _dense_weight(module.base_layer)
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).float()  # [out, in]
            out[f"{name}.weight"] = weight
            if module.base_layer.bias is not None:
                out[f"{name}.bias"] = module.base_layer.bias.detach().float()
            continue
        if "lora_" in name or name.endswith(".base_layer") or ".base_layer." in name:
            continue  # already folded into the merged weight above
        if getattr(getattr(module, "weight", None), "quant_state", None) is not None:
            out[f"{name}.weight"] = _dense_weight(module)
            if module.bias is not None:
                out[f"{name}.bias"] = module.bias.detach().float()
            continue
        for pname, param in module.named_parameters(recurse=False):
            out[f"{name}.{pname}" if name else pname] = param.detach().float()
        for bname, buf in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:
                out[f"{name}.{bname}" if name else bname] = buf.detach()
    return base, out


def plain_llm(llm, dtype: torch.dtype = torch.float32):
    """A fresh transformers model holding the merged, dequantized weights."""
    base, state = merged_state_dict(llm)
    config = copy.deepcopy(base.config)
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(f"merged LLM weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(dtype).eval()


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())


def export_model(model, processor, out, dtype: torch.dtype | None = None, card=None) -> Path:
    """Write llm/ (with the processor's tokenizer), <modality>_encoder/, weights.safetensors
    (projectors) and recipe.yaml: a folder `load_pretrained` turns back into both. `card(folder)`
    writes the model card."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    llm_dtype = dtype or next(p for p in model.llm.parameters() if p.is_floating_point()).dtype
    llm = plain_llm(model.llm, llm_dtype)
    llm.save_pretrained(tmp / "llm")
    processor.tokenizer.save_pretrained(tmp / "llm")
    recipe = copy.deepcopy(model.recipe)
    recipe.model.init_from = None
    recipe.model.llm.name_or_path, recipe.model.llm.tokenizer = LOCAL + "llm", None
    recipe.model.llm.quantization, recipe.model.llm.lora, recipe.model.llm.gguf_file = "none", None, None
    for modality, encoder in model.encoders.items():
        encoder.save_pretrained(tmp / f"{modality}_encoder")
        enc_cfg = getattr(recipe.model, modality)
        enc_cfg.name_or_path, enc_cfg.random_config = LOCAL + f"{modality}_encoder", None
    projectors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n.startswith("projectors.")}
    atomic_save(projectors, tmp / WEIGHTS)
    save_recipe(recipe, tmp / RECIPE_FILE)
    if card is not None:
        card(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


FORMATS = ("omnilm", "llava")


def export(model, processor, out, fmt: str = "omnilm", dtype: torch.dtype | None = None, source=None,
           keep_lm_head_bias: bool = False) -> Path:
    """`omnilm export`: omnilm's own folder, or a transformers LLaVA folder (omnilm.model.llava_format);
    either with a model card. `source` is the run folder, for the metrics it recorded."""
    from omnilm.model.card import write_model_card

    def card(folder: Path) -> None:
        write_model_card(folder, model.recipe, fmt, Path(source) if source else None)

    if fmt == "llava":
        from omnilm.model.llava_format import export_llava

        return export_llava(model, processor, out, dtype, card=card, keep_lm_head_bias=keep_lm_head_bias)
    if keep_lm_head_bias:
        raise ConfigError("--keep-lm-head-bias is for --format llava")
    return export_model(model, processor, out, dtype, card=card)
