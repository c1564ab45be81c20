"""Recipe checks that need the model's shape, done before any weights are read.

They read only the LLM's config and tokenizer and build empty skeletons (parameters on the meta
device: no memory, no weights), so a token id outside the vocabulary, a LoRA target the LLM does
not have or a typo in a random_config fails in about a second with the key named, instead of
after a download or deep inside training.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import torch
from accelerate import init_empty_weights
from huggingface_hub.errors import HFValidationError, StrictDataclassError
from huggingface_hub.utils import validate_repo_id
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PreTrainedConfig
from transformers.pytorch_utils import Conv1D
from transformers.utils import CONFIG_NAME, cached_file

from omnilm.config import EncoderConfig, LLMConfig, LoraConfig, Recipe, validate
from omnilm.errors import ConfigError, OmniError
from omnilm.core.components import ENCODERS
from omnilm.model.tokenizer import BYTES, load_tokenizer

LORA_LAYERS = (nn.Linear, Conv1D, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what peft's LoRA adapts
LINEAR = (nn.Linear, Conv1D)


def check_against_model(recipe: Recipe, root: Path | None = None) -> None:
    """The recipe's values, then its names and ids against the models it names; `root` resolves
    "./" paths. Recipes built in code have skipped load_recipe, so the value checks run again."""
    from omnilm.model.paths import resolve_path

    from omnilm.model.llava_source import llava_config_of

    validate(recipe)
    model = recipe.model
    llava = llava_config_of(resolve_path(model.init_from, root)) if model.init_from else None
    if llava is not None:
        check_llava_start(recipe, llava)
    with torch.random.fork_rng(devices=[]):  # building skeletons must not move the seeded RNG
        config = llava.text_config if llava is not None else llm_config(model.llm, root)
        vocab = config.get_text_config().vocab_size
        if llava is None:  # a LLaVA checkpoint brings its own tokenizer
            check_tokenizer(model.llm, root, vocab)
        llm = llm_skeleton(config, model.llm)
        for modality in ("image", "audio"):
            enc = getattr(model, modality)
            if enc is None:
                continue
            if enc.end_token_id is not None and enc.end_token_id >= vocab:
                raise ConfigError(f"model.{modality}.end_token_id = {enc.end_token_id}: must be a token id of "
                                  f"the LLM, in [0, {vocab})")
            if enc.random_config is not None:
                check_random_encoder(enc, f"model.{modality}", model.seed)
            else:
                require_fetchable(resolve_path(enc.name_or_path, root), f"model.{modality}")
        if model.llm.lora is not None:
            check_lora(model.llm.lora, llm)
    if model.init_from and llava is None and not Path(resolve_path(model.init_from, root)).exists():
        raise ConfigError(f"model.init_from {model.init_from!r}: no such run or export folder")


def check_llava_start(recipe: Recipe, llava) -> None:
    """A LLaVA checkpoint as model.init_from decides the LLM, the vision tower and the projector."""
    from omnilm.model.llava_source import encoder_settings

    source = recipe.model.init_from
    if recipe.model.image is not None:
        raise ConfigError(f"model.image: leave it out when model.init_from is a LLaVA checkpoint ({source}): "
                          "its vision tower, feature layer and projector are used")
    if recipe.model.llm.random_config is not None:
        raise ConfigError(f"model.llm.random_config: leave it out when model.init_from is a LLaVA checkpoint "
                          f"({source})")
    encoder_settings(llava)  # what omnilm cannot take from it fails here, before any weights


def require_source(value: str | None, key: str) -> None:
    """A name_or_path is an existing file or folder, or else it must at least be a hub id."""
    if value is None or Path(value).exists():
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise ConfigError(f"{key} {value!r}: no such local file or folder, and not a Hugging Face hub id "
                          "(name or namespace/name) either") from None


def require_fetchable(value: str | None, section: str) -> None:
    """A section's name_or_path is a local file or folder, or a hub id whose config the hub gives now."""
    require_source(value, f"{section}.name_or_path")
    if value is not None and not Path(value).exists():
        try:
            cached_file(value, CONFIG_NAME)
        except OSError as err:
            raise not_fetched(err, value, section) from None


def not_fetched(err: Exception, value: str, section: str) -> OmniError:
    """Why a name_or_path could not be loaded; a name that is not local was meant for the hub (or
    was a missing folder, or random_config was forgotten): say so, not just how the hub failed."""
    if Path(value).exists():
        return OmniError(f"cannot load {section} {value!r}: {_one_line(err)}")
    return ConfigError(f"{section}.name_or_path {value!r}: no such local file or folder, and the Hugging Face hub "
                       f"cannot give it ({_one_line(err).split('. ')[0]}); point it at a folder of weights, or set "
                       f"{section}.random_config for random weights")


def llm_config(cfg: LLMConfig, root: Path | None) -> PreTrainedConfig:
    from omnilm.model.paths import resolve_path

    if cfg.random_config is None:
        path = resolve_path(cfg.name_or_path, root)
        require_source(path, "model.llm.name_or_path")
        try:
            return AutoConfig.from_pretrained(path, **({"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}))
        except (OSError, ValueError) as err:
            raise not_fetched(err, path, "model.llm") from None
    params = dict(cfg.random_config)
    model_type = params.pop("model_type", None)
    if model_type is None:
        raise ConfigError("model.llm.random_config needs a model_type (e.g. phi, llama)")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=3)
        raise ConfigError(f"model.llm.random_config.model_type {model_type!r}: not a transformers model type"
                          + (f"; close: {', '.join(close)}" if close else " (e.g. phi, llama)"))
    try:
        config = AutoConfig.for_model(model_type, **params)
    except (StrictDataclassError, TypeError, ValueError) as err:  # config classes check each field's type
        raise ConfigError(f"model.llm.random_config: {_one_line(err)}") from None
    check_config_keys(config, params, "model.llm.random_config")
    return config


def llm_skeleton(config: PreTrainedConfig, cfg: LLMConfig) -> nn.Module:
    """The LLM with every layer in place and no weights (meta tensors)."""
    try:
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config)
    except Exception as err:  # the numbers came from the user: report them, not a traceback
        source = "model.llm.random_config" if cfg.random_config is not None else "model.llm.name_or_path"
        raise ConfigError(f"{source}: cannot build a {config.model_type!r} model from it: "
                          f"{_one_line(err)}") from None


def check_config_keys(config: PreTrainedConfig, params: dict, where: str) -> None:
    """Keys the config class neither declares nor consumes are stored verbatim and then ignored:
    nearly always a typo, which would otherwise train a model of another shape without a word."""
    known = {f.name for f in dataclasses.fields(config)} | set(config.attribute_map) | {"model_type"}
    unknown = sorted(k for k in params if k not in known and k in vars(config))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown key {where}.{unknown[0]} for {type(config).__name__}{hint}")


def check_tokenizer(cfg: LLMConfig, root: Path | None, vocab: int) -> None:
    """Special tokens (EOS, padding, media ends) are fed to the LLM, so they must be in its vocabulary."""
    from omnilm.model.paths import resolve_path

    name = cfg.tokenizer or (BYTES if cfg.random_config is not None else cfg.name_or_path)
    if name != BYTES:
        require_source(resolve_path(name, root), "model.llm.tokenizer" if cfg.tokenizer else "model.llm.name_or_path")
    try:
        tokenizer = load_tokenizer(resolve_path(name, root), cfg.gguf_file)
    except (OSError, ValueError) as err:
        raise OmniError(f"cannot load the tokenizer {name!r}: {_one_line(err)}") from None
    outside = [(tok, i) for tok, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if i >= vocab]
    if outside:
        tok, i = outside[0]
        raise ConfigError(f"model.llm.tokenizer: its special token {tok!r} has id {i}, outside the LLM's "
                          f"vocabulary of {vocab} tokens")


def check_random_encoder(enc: EncoderConfig, where: str, seed: int) -> None:
    """Build the encoder's skeleton from its random_config; unknown keys and bad sizes fail here."""
    from omnilm.model.encoders import build_encoder

    fixed = ENCODERS[enc.type].fixed_architecture
    if fixed and enc.random_config:
        raise ConfigError(f"{where}.random_config: {enc.type} has a fixed architecture; use random_config: {{}}")
    try:
        with init_empty_weights():
            encoder = build_encoder(enc, seed)
    except OmniError:
        raise
    except Exception as err:  # the numbers came from the user: report them, not a traceback
        raise ConfigError(f"{where}.random_config: cannot build a {enc.type} encoder from it: "
                          f"{_one_line(err)}") from None
    if not fixed:
        config = next(m.config for m in encoder.modules() if isinstance(getattr(m, "config", None), PreTrainedConfig))
        check_config_keys(config, enc.random_config, f"{where}.random_config")


def check_lora(lora: LoraConfig, llm: nn.Module) -> None:
    """Each target names a layer peft can adapt, and the rank fits the layers it adapts."""
    layers = {name: module for name, module in llm.named_modules() if isinstance(module, LORA_LAYERS)}
    for target in lora.target_modules:
        # How peft matches a list of names: the whole module name or its last dotted parts.
        matched = [m for name, m in layers.items() if name == target or name.endswith("." + target)]
        if not matched:
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in layers.items() if isinstance(m, LINEAR)})
            raise ConfigError(f"model.llm.lora.target_modules: {target!r} is not a layer of this LLM "
                              f"({type(llm).__name__}); its linear layers are: {', '.join(linear)}")
        width = min(min(m.weight.shape[:2]) for m in matched)
        if lora.r > width:
            raise ConfigError(f"model.llm.lora.r = {lora.r}: must be at most {width}, the width of the "
                              f"{target!r} layers it adapts")


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."
