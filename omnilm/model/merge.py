"""LoRA merged into its base, 4-bit weights dequantized first: W = dequant(W_nf4) + B @ A * scale,
so an exported LLM computes what the (Q)LoRA model computed during training. Both export formats
(omnilm.model.export, omnilm.model.llava_format) start from `plain_llm`."""
from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM


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
