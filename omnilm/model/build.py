"""Build an OmniLM and its OmniProcessor from a recipe: load pretrained parts, quantize, attach LoRA.

The two are built together here (and loaded together: omnilm.model.saved), the transformers way:
the model computes, the processor turns Samples into what the model takes; neither holds the
other.

Randomly initialised components (tests, benchmarks, tiny recipes) are first *materialized*
into a folder (atomically: a killed write never leaves a half model there) and then loaded
from it like any pretrained model, so quantization, saving and reloading follow one path
whatever the source.
"""
from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from omnilm.config import EncoderConfig, LLMConfig, ProjectorConfig, Recipe
from omnilm.errors import ConfigError, OmniError
from omnilm.extras import require
from omnilm.files import atomic_folder
from omnilm.model.checkpoint import load_trained_weights, nbytes
from omnilm.model.checks import check_against_model, check_llava_start
from omnilm.core.components import ENCODERS
from omnilm.model.configuration import omni_config
from omnilm.model.encoders import build_encoder, encoder_config_of
from omnilm.model.omni import OmniLM
from omnilm.model.paths import LOCAL, resolve_path
from omnilm.model.processing import OmniProcessor
from omnilm.model.tokenizer import BYTES, load_tokenizer

log = logging.getLogger(__name__)


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    if name == "auto":
        on_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        return torch.bfloat16 if on_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def start_from_llava(recipe: Recipe, base_dir: Path) -> Recipe:
    """A LLaVA checkpoint as model.init_from: its parts written into `base_dir` once (LLM, vision
    tower, projector weights) and a recipe built on them; any other recipe comes back as it is."""
    from omnilm.model.llava_source import PROJECTOR_DIR, llava_config_of, llava_parts

    config = llava_config_of(recipe.model.init_from) if recipe.model.init_from else None
    if config is None:
        return recipe
    check_llava_start(recipe, config)
    recipe, base_dir = copy.deepcopy(recipe), Path(base_dir).resolve()
    settings = llava_parts(recipe.model.init_from, config, base_dir)
    llm = recipe.model.llm
    llm.name_or_path, llm.tokenizer, llm.gguf_file = str(base_dir / "llm"), None, None
    recipe.model.image = EncoderConfig(name_or_path=str(base_dir / "image_encoder"),
                                       projector=ProjectorConfig(type="mlp2x_gelu"), **settings)
    recipe.model.init_from = str(base_dir / PROJECTOR_DIR)  # the projector, loaded as trained weights
    return recipe


def materialize_random(recipe: Recipe, base_dir: Path) -> Recipe:
    """Write random-config components (and a LLaVA init_from's parts, see start_from_llava) into
    `base_dir` once; return a recipe pointing at them."""
    recipe = start_from_llava(recipe, base_dir)
    recipe, base_dir = copy.deepcopy(recipe), Path(base_dir).resolve()
    llm = recipe.model.llm
    if llm.random_config is not None:
        target = base_dir / "llm"
        if not target.is_dir():
            params = dict(llm.random_config)
            model_type = params.pop("model_type", None)
            if model_type is None:
                raise ConfigError("model.llm.random_config needs a model_type (e.g. phi, llama)")
            torch.manual_seed(recipe.model.seed)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **params))
            with atomic_folder(target, nbytes(model.state_dict())) as tmp:
                model.save_pretrained(tmp)
                load_tokenizer(resolve_path(llm.tokenizer, None) or BYTES).save_pretrained(tmp)  # zoo: names too
        llm.name_or_path, llm.random_config, llm.tokenizer = str(target), None, None
    for modality in ("image", "audio"):
        enc = getattr(recipe.model, modality)
        if enc is None or enc.random_config is None:
            continue
        target = base_dir / f"{modality}_encoder"
        if not target.is_dir():
            encoder = build_encoder(enc, recipe.model.seed)
            with atomic_folder(target, nbytes(encoder.state_dict())) as tmp:
                encoder.save_pretrained(tmp)
        enc.name_or_path, enc.random_config = str(target), None
    return recipe


def build_llm(cfg: LLMConfig, root: Path | None, device=None):
    path = resolve_path(cfg.name_or_path, root)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict = {"dtype": dtype}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    if cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        require("bitsandbytes", "model.llm.quantization: nf4")  # before transformers' own longer error
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # FSDP shards only floating-point tensors: under it the packed 4-bit weights are stored as the
            # compute dtype (QLoRA with FSDP), so they are sharded too instead of copied whole to every GPU.
            **({"bnb_4bit_quant_storage": dtype} if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else {}),
        )
        kwargs["device_map"] = {"": str(device or ("cuda" if torch.cuda.is_available() else "cpu"))}
    try:
        llm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise OmniError(f"cannot load LLM {path!r}: {err}") from None
    if cfg.quantization == "nf4":
        _avoid_bnb_cpu_repack(llm)
        from peft import prepare_model_for_kbit_training

        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    if cfg.lora is not None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lora = cfg.lora
        llm = get_peft_model(
            llm,
            PeftLoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    return llm


def _avoid_bnb_cpu_repack(llm) -> None:
    """bitsandbytes on AVX512-BF16 CPUs repacks 4-bit weights after an eval forward, which then
    breaks the next training forward (see docs/architecture.md); turning that path off avoids it."""
    import bitsandbytes as bnb

    for module in llm.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _scratch_folder() -> Path:
    """A folder for the random parts of a model built in memory. The model reads it while the
    process lives (saving it copies its tokenizer from there), so it goes when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="omnilm-base-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def build_model(recipe: Recipe, *, root: Path | None = None, base_dir: Path | None = None,
                device=None) -> tuple[OmniLM, OmniProcessor]:
    """Everything the recipe names, loaded and assembled: (model, processor).

    `root` resolves "./" paths of a saved recipe; `base_dir` receives random components
    (a temporary folder when not given).
    """
    if _has_random(recipe) or _from_llava(recipe):
        base_dir = Path(base_dir or _scratch_folder())
        recipe = start_from_llava(recipe, base_dir)
    check_against_model(recipe, root)  # names and ids against the models' shapes, before any weights
    if _has_random(recipe):
        recipe = materialize_random(recipe, base_dir)
    llm = build_llm(recipe.model.llm, root, device)
    encoders = {}
    for modality in ("image", "audio"):
        enc_cfg = getattr(recipe.model, modality)
        if enc_cfg is None:
            continue
        enc_cfg = copy.deepcopy(enc_cfg)
        enc_cfg.name_or_path = resolve_path(enc_cfg.name_or_path, root)
        encoder = build_encoder(enc_cfg, recipe.model.seed)
        encoders[modality] = encoder.to(dtype=resolve_dtype(recipe.model.llm.dtype, device)).requires_grad_(False).eval()
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    config = omni_config(recipe.model, base.config, {m: encoder_config_of(e) for m, e in encoders.items()})
    model = OmniLM(config, llm=llm, encoders=encoders, seed=recipe.model.seed)
    if device is not None:
        model.to(device)  # 4-bit weights are already placed; .to() leaves them be
    model.recipe = recipe
    if recipe.model.init_from:
        model.inherited = set(load_trained_weights(model, recipe.model.init_from, partial=True))
    return model, build_processor(recipe, root)


def build_processor(recipe: Recipe, root: Path | None = None) -> OmniProcessor:
    """The processor of `recipe`'s model from the recipe alone: its tokenizer and template, each
    encoder's weight-free preprocessing (configs and preprocessor files, never weights). An LLM or
    encoder still given as `random_config` (not materialized) gets what it will be saved with."""
    llm = recipe.model.llm
    name = llm.tokenizer or (BYTES if llm.random_config is not None else llm.name_or_path)
    preprocessors = {}
    for modality in ("image", "audio"):
        enc_cfg = getattr(recipe.model, modality)
        if enc_cfg is not None:
            enc_cfg = copy.deepcopy(enc_cfg)
            enc_cfg.name_or_path = resolve_path(enc_cfg.name_or_path, root)
            preprocessors[modality] = ENCODERS[enc_cfg.type].build_preprocessor(enc_cfg)
    return OmniProcessor.from_recipe(recipe, load_tokenizer(resolve_path(name, root), llm.gguf_file), preprocessors)


def _has_random(recipe: Recipe) -> bool:
    encs = [e for e in (recipe.model.image, recipe.model.audio) if e is not None]
    return recipe.model.llm.random_config is not None or any(e.random_config is not None for e in encs)


def _from_llava(recipe: Recipe) -> bool:
    from omnilm.model.llava_source import llava_config_of

    return bool(recipe.model.init_from) and llava_config_of(recipe.model.init_from) is not None


def portable(recipe: Recipe, folder: Path) -> Recipe:
    """Paths inside `folder` become "./relative", so the folder can be moved or copied."""
    recipe = copy.deepcopy(recipe)
    for cfg in (recipe.model.llm, recipe.model.image, recipe.model.audio):
        for attr in ("name_or_path", "tokenizer"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if value and Path(value).is_absolute() and Path(value).is_relative_to(folder.resolve()):
                setattr(cfg, attr, LOCAL + str(Path(value).relative_to(folder.resolve())))
    return recipe
