"""`omnilm export`: a self-contained folder that loads without peft or bitsandbytes.

LoRA is merged into the LLM after dequantizing a 4-bit base: W = dequant(W_nf4) + B @ A * scale,
so the exported weights compute what the QLoRA model computed during training. omnilm's own
format is a transformers model folder (omnilm.model.saved); `llava` is transformers' LLaVA, or
LLaVA-NeXT for a model with `model.image.tiling: anyres`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from omnilm.errors import ConfigError
from omnilm.model.saved import write_model_folder


FORMATS = ("omnilm", "llava", "gguf")


def export(model, processor, out, fmt: str = "omnilm", dtype: torch.dtype | None = None, source=None,
           keep_lm_head_bias: bool = False, outtype: str = "f16", approximate_clip: bool = False) -> Path:
    """`omnilm export`: omnilm's own folder, or a transformers LLaVA folder (omnilm.model.llava_format;
    LLaVA-NeXT with anyres tiling: omnilm.model.llava_next_format);
    either with a model card. `source` is the run folder, for the metrics it recorded."""
    from omnilm.model.card import write_model_card

    def card(folder: Path) -> None:
        write_model_card(folder, model.recipe, fmt, Path(source) if source else None)

    image = model.recipe.model.image if model.recipe is not None else None
    if fmt == "llava" and image is not None and image.tiling == "anyres":
        from omnilm.model.llava_next_format import export_llava_next

        return export_llava_next(model, processor, out, dtype, card=card, keep_lm_head_bias=keep_lm_head_bias)
    if fmt == "llava":
        from omnilm.model.llava_format import export_llava

        return export_llava(model, processor, out, dtype, card=card, keep_lm_head_bias=keep_lm_head_bias)
    if fmt == "gguf":
        from omnilm.model.gguf_format import export_gguf

        return export_gguf(model, processor, out, outtype, card=card, approximate_clip=approximate_clip)
    if keep_lm_head_bias:
        raise ConfigError("--keep-lm-head-bias is for --format llava")
    return write_model_folder(model, processor, out, dtype, card=card)
