"""Export a `tiling: anyres` model to transformers' LLaVA-NeXT format.

`export_llava_next` writes a `LlavaNextForConditionalGeneration` folder. Everything but the tiling
is the LLaVA export's (omnilm.model.llava_format: the same checks, weight names, tokens and chat
template); LLaVA-NeXT adds the grid pinpoints, its image processor (the one omnilm's processor
already cuts tiles with) and the learned `image_newline`, which omnilm's TileLayout holds in the
LLM's embedding space just as LLaVA-NeXT does.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from omnilm.model.llava_format import llava_config, llava_parts, write_folder


def export_llava_next(model, processor, out, dtype: torch.dtype | None = None, card=None,
                      keep_lm_head_bias: bool = False) -> Path:
    """Write `model` as a transformers LLaVA-NeXT folder, or raise NotExpressible before anything is written."""
    from transformers import LlavaNextConfig, LlavaNextProcessor

    parts = llava_parts(model, processor, dtype, keep_lm_head_bias)
    layout = model.projectors["image"].layout
    parts.state["image_newline"] = layout.image_newline.detach().to("cpu", parts.dtype).contiguous()
    pinpoints = [list(point) for point in layout.tiling.grid_pinpoints]
    config = llava_config(parts.llm, parts.tower, parts.choice, parts.image_id, processor.image_tokens, parts.dtype,
                          config_class=LlavaNextConfig, image_grid_pinpoints=pinpoints)
    hf_processor = LlavaNextProcessor(image_processor=copy.deepcopy(processor.image_processor),
                                      **parts.processor_kwargs)
    return write_folder(out, parts.state, config, parts.generation, hf_processor, card)
