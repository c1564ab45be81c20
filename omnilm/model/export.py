"""`omnilm export`: a self-contained folder that loads without peft or bitsandbytes.

LoRA is merged into the LLM after dequantizing a 4-bit base: W = dequant(W_nf4) + B @ A * scale,
so the exported weights compute what the QLoRA model computed during training.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from omnilm.config import save_recipe
from omnilm.errors import ConfigError
from omnilm.files import atomic_folder
from omnilm.model.build import RECIPE_FILE
from omnilm.model.paths import LOCAL
from omnilm.model.checkpoint import WEIGHTS, atomic_save
from omnilm.model.merge import plain_llm


def export_model(model, processor, out, dtype: torch.dtype | None = None, card=None) -> Path:
    """Write llm/ (with the processor's tokenizer), <modality>_encoder/, weights.safetensors
    (projectors) and recipe.yaml: a folder `load_pretrained` turns back into both. `card(folder)`
    writes the model card."""
    with atomic_folder(Path(out)) as tmp:
        _write_export(model, processor, tmp, dtype, card)
    return Path(out)


def _write_export(model, processor, tmp: Path, dtype: torch.dtype | None, card) -> None:
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
