"""A transformers LLaVA checkpoint (folder or hub id) as the start of an omnilm model:
`llava_parts` takes it apart into an LLM folder, a vision-tower folder and omnilm projector
weights, which `model.init_from` then builds on. The other direction, writing such a folder, is
omnilm.model.llava_format; the weight names both use are here."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from omnilm.errors import ConfigError, OmniError

TOWER_PREFIX = "vision_tower.vision_model."
LLM_PREFIX = "language_model."
PROJECTOR_LAYERS = {"linear_1": 0, "linear_2": 2}  # LLaVA's names -> positions in omnilm's mlp2x_gelu
PROJECTOR_DIR = "llava_projector"  # inside base_dir: the projector as omnilm weights, for init_from

def llava_config_of(source: str):
    """The LlavaConfig of a folder or hub id, or None when `source` is an omnilm folder."""
    from transformers import AutoConfig

    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            return None
        config = json.loads((path / "config.json").read_text())
        return AutoConfig.from_pretrained(path) if config.get("model_type") == "llava" else None
    if path.exists() or path.parent.is_dir() and path.parent != Path(".") or not hub_id_shaped(source):
        return None  # an omnilm folder, or a missing local one such as runs/stage1 (the recipe checks report it)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.init_from {source!r}: no such run, export or LLaVA folder, and no LLaVA "
                          f"checkpoint of that name could be read from the Hugging Face hub: {err}") from None
    if config.model_type != "llava":
        raise ConfigError(f"model.init_from {source!r}: a {config.model_type!r} model, not a LLaVA checkpoint")
    return config


def hub_id_shaped(value: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def encoder_settings(config) -> dict:
    """LLaVA's vision settings as omnilm EncoderConfig values, or the reason they have none."""
    where = "model.init_from"
    vision = config.vision_config
    kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}.get(vision.model_type)
    if kind is None:
        raise ConfigError(f"{where}: a {vision.model_type!r} vision tower; omnilm reads CLIP or SigLIP")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ConfigError(f"{where}: vision_feature_layer {layer}: omnilm takes one layer, not several")
    strategy = config.vision_feature_select_strategy
    if kind == "siglip" and strategy == "default":
        raise ConfigError(f"{where}: vision_feature_select_strategy 'default' drops SigLIP's first patch, "
                          "which omnilm's drop_cls (CLIP only) cannot express")
    if config.projector_hidden_act != "gelu":
        raise ConfigError(f"{where}: projector_hidden_act {config.projector_hidden_act!r}: omnilm's mlp2x_gelu "
                          "uses exact GELU ('gelu')")
    if kind == "siglip" and layer == -1:
        layer = vision.num_hidden_layers  # LLaVA's -1 is before SigLIP's post-layernorm; omnilm's -1 after it
    return {"type": kind, "layer": layer, "drop_cls": strategy == "default"}


def llava_parts(source: str, config, base_dir: Path) -> dict:
    """Take a LLaVA checkpoint apart into base_dir/llm (LLM + tokenizer), base_dir/image_encoder
    (tower + image processor) and base_dir/llava_projector (omnilm projector weights), each written
    once. -> the image EncoderConfig values to use with them."""
    settings = encoder_settings(config)
    base_dir = Path(base_dir)
    if not all((base_dir / d).is_dir() for d in ("llm", "image_encoder", PROJECTOR_DIR)):
        _write_parts(source, config, base_dir)
    return settings


def _write_parts(source: str, config, base_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    from omnilm.files import atomic_folder
    from omnilm.model.checkpoint import WEIGHTS, atomic_save, nbytes

    try:
        llava = LlavaForConditionalGeneration.from_pretrained(source, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(source)
        images = AutoImageProcessor.from_pretrained(source, backend="pil")
    except OSError as err:
        raise OmniError(f"cannot load LLaVA checkpoint {source!r}: {err}") from None
    llm = AutoModelForCausalLM.from_config(config.text_config, dtype=llava.dtype)
    own = {f"{llm.base_model_prefix}.{k}": v for k, v in llava.model.language_model.state_dict().items()}
    own["lm_head.weight"] = llava.lm_head.weight
    missing, unexpected = llm.load_state_dict(own, strict=False)
    missing = [k for k in missing if k != "lm_head.bias"]  # LLaVA's LM head has none: zeros below
    if missing or unexpected:
        raise OmniError(f"{source}: the LLM's weights do not fit {type(llm).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(llm.get_output_embeddings(), "bias", None) is not None:
        with torch.no_grad():
            llm.get_output_embeddings().bias.zero_()  # LLaVA's LM head has none
    with atomic_folder(base_dir / "llm", nbytes(llm.state_dict())) as tmp:
        llm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    tower = llava.model.vision_tower
    with atomic_folder(base_dir / "image_encoder", nbytes(tower.state_dict())) as tmp:
        tower.save_pretrained(tmp)
        images.save_pretrained(tmp)
    projector = llava.model.multi_modal_projector
    weights = {}
    for llava_name, index in PROJECTOR_LAYERS.items():
        layer = getattr(projector, llava_name)
        weights[f"projectors.image.{index}.weight"] = layer.weight
        # A LLaVA projector without biases is the same function as omnilm's with zero biases.
        weights[f"projectors.image.{index}.bias"] = layer.bias if layer.bias is not None else \
            torch.zeros(layer.out_features, dtype=layer.weight.dtype)
    with atomic_folder(base_dir / PROJECTOR_DIR, nbytes(weights)) as tmp:
        atomic_save({k: v.detach().contiguous() for k, v in weights.items()}, tmp / WEIGHTS)
