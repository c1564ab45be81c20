"""Typed, nested recipe: dataclasses loaded from YAML, validated, with dotted CLI overrides.

Every error names the offending key by its full dotted path and, for unknown keys, lists the
valid ones, so a typo in a recipe is a one-line fix rather than a traceback. Numeric fields carry
their allowed range (`bounded`) and one walk checks them all; checks that need the model's shape
(token ids, LoRA targets, random_config keys) are in omnilm.model.checks.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from omnilm.errors import ConfigError
from omnilm.core.components import ENCODERS, encoder_spec

SEED_LIMIT = 2**32  # numpy and torch generators both take seeds in [0, 2**32)

# The names each string field accepts. The registries that own them sit in higher layers
# (data.sources.SOURCES, data.chat.TEMPLATES, training.stages.STAGES, model.projector.PROJECTORS,
# audio.transcribe.BACKENDS); tests/test_config.py checks that each registry's names equal these.
Stage = Literal["align", "audio-align", "instruct", "projectors", "finetune"]
Source = Literal["coco", "llava", "jsonl", "asr", "hf", "easyvqa"]
Template = Literal["caption", "plain", "phi", "chat"]
ProjectorType = Literal["resblock", "mlp2x_gelu", "mlp", "linear", "ultravox"]
TranscriberBackend = Literal["transformers", "ctranslate2"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bf16 on GPU, fp32 on CPU
Quantization = Literal["none", "nf4"]  # nf4: a QLoRA base
AudioRoute = Literal["auto", "native", "transcribe"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]  # auto: bf16 on GPU, no on CPU
# none: one view at the tower's size; anyres: LLaVA-NeXT's grid + overview; split: tiles + a global view
Tiling = Literal["none", "anyres", "split"]


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric field, or of each value of a mapping field."""

    ge: float | None = None  # at least
    gt: float | None = None  # more than
    le: float | None = None  # at most
    lt: float | None = None  # less than

    def allows(self, value) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def bounded(default=None, *, factory=None, **bounds):
    """A dataclass field whose numbers must lie within `bounds` (ge/gt/le/lt); see check_bounds."""
    extra = {"default_factory": factory} if factory else {"default": default}
    return field(metadata={"bounds": Bounds(**bounds)}, **extra)


@dataclass
class ProjectorConfig:
    type: ProjectorType = "resblock"
    # inner width for mlp types (default: the LLM width) and ultravox (default: twice the LLM width, halved by its SwiGLU)
    hidden_size: Optional[int] = bounded(None, ge=1)
    tokens_per_feature: int = bounded(1, ge=1)  # LLM tokens made from each encoder feature vector
    # CLIP/SigLIP: N x N neighbouring patch tokens merged into one vector (N^2 times as wide) first
    pixel_shuffle: int = bounded(1, ge=1, le=4)


@dataclass
class EncoderConfig:
    type: str = "clip"  # registry name, see omnilm.core.components.ENCODERS
    name_or_path: Optional[str] = None  # hub id or folder of pretrained weights
    random_config: Optional[dict] = None  # build a randomly initialised encoder from this config
    layer: int = -1  # which hidden state to take (-1 = last, -2 = LLaVA's choice)
    drop_cls: bool = True  # drop the CLS token (CLIP); ignored by encoders without one
    image_size: Optional[int] = bounded(None, ge=1)  # override the processor's input size
    pool_grid: Optional[int] = bounded(None, ge=1)  # efficientnet_lite0: average-pool the feature grid to N x N
    stack_frames: int = bounded(8, ge=1)  # audio: consecutive encoder frames stacked into one token
    max_seconds: float = bounded(120.0, gt=0)  # audio: longer inputs are rejected
    # whisper: each clip padded to whole 30-s windows as llama.cpp does (needed by a GGUF export), not
    # encoded at its real length; costs 1,500 / stack_frames tokens a window however short the clip
    pad_to_window: bool = False
    tiling: Tiling = "none"  # clip/siglip: how an image is cut into tower-sized tiles (omnilm.model.tiling)
    # anyres: the grid sizes [height, width] in pixels to choose from, each a multiple of the tower's
    # image size (default: LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1 and 1x3 tiles)
    grid_pinpoints: Optional[list[list[int]]] = None
    max_tiles: Optional[int] = bounded(None, ge=1)  # split: at most this many tiles besides the global view (default 4)
    # token appended after each item's features (seed: 23893); must be in the LLM's vocabulary
    end_token_id: Optional[int] = bounded(None, ge=0)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)


@dataclass
class LoraConfig:
    r: int = bounded(64, ge=1)  # also at most the width of the layers it adapts
    alpha: int = bounded(16, gt=0)
    dropout: float = bounded(0.05, ge=0, lt=1)
    # names of the LLM's layers, matched as peft does (the full name or its last parts)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])


@dataclass
class LLMConfig:
    name_or_path: str = "microsoft/phi-2"
    random_config: Optional[dict] = None  # build a random LLM from this config (tests, benchmarks)
    tokenizer: Optional[str] = None  # default: name_or_path; "bytes" = built-in byte tokenizer
    dtype: Dtype = "auto"
    quantization: Quantization = "none"
    lora: Optional[LoraConfig] = None
    gguf_file: Optional[str] = None


@dataclass
class TranscriberConfig:
    backend: TranscriberBackend = "transformers"
    name_or_path: str = "openai/whisper-small"  # hub id or folder; "zoo:whisper-tiny.en" = offline copy
    language: Optional[str] = None


def transcriber_config(name_or_path: str | None, backend: str | None = None) -> Optional[TranscriberConfig]:
    """A transcriber named on a command line; zoo: models are CTranslate2 folders."""
    if backend and not name_or_path:
        raise ConfigError("--transcriber-backend needs --transcriber (a Whisper folder, hub id or zoo:whisper-tiny.en)")
    if not name_or_path:
        return None
    return TranscriberConfig(backend=backend or ("ctranslate2" if name_or_path.startswith("zoo:") else "transformers"),
                             name_or_path=name_or_path)


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    image: Optional[EncoderConfig] = None
    audio: Optional[EncoderConfig] = None
    # native: audio encoder features in the prompt; transcribe: Whisper text in the prompt;
    # auto: native when model.audio is set, else transcribe when a transcriber is set.
    audio_route: AudioRoute = "auto"
    transcriber: Optional[TranscriberConfig] = None
    # a run or export folder whose trained weights seed this model, or a transformers LLaVA folder
    # or hub id whose LLM, vision tower and projector become this model's (then leave model.image out)
    init_from: Optional[str] = None
    seed: int = bounded(0, ge=0, lt=SEED_LIMIT)  # seed for random_config components


@dataclass
class DataConfig:
    source: Source = "coco"
    path: Optional[str] = None  # annotation / conversation / manifest file; hf: hub id, file, folder or glob
    name: Optional[str] = None  # hf: the data set's configuration (subset)
    split: str = "train"  # hf: which split
    revision: Optional[str] = None  # hf: hub branch, tag or commit
    columns: dict = field(default_factory=dict)  # hf: role -> column, e.g. {messages: chat, images: pics}
    image_dir: Optional[str] = None
    audio_dir: Optional[str] = None
    template: Template = "caption"  # how messages become the prompt
    prompt: str = ""  # extra user text for single-turn templates (e.g. "Describe the image.")
    system: Optional[str] = None
    # Each user turn's media markers first (images, then audio), then its text, as LLaVA lays out
    # its data: the model then reads the same prompt whatever order a client sends the parts in.
    media_first: bool = False
    max_length: int = bounded(512, ge=1)
    limit: Optional[int] = bounded(None, ge=1)  # use only the first N samples
    skip_bad: bool = False  # skip (and count) unreadable samples instead of stopping
    feature_cache: Optional[str] = None  # folder written by `omnilm cache-features`
    num_workers: int = bounded(0, ge=0)
    # hf: read rows as they stream (nothing held in memory; shards split across processes)
    streaming: bool = False
    shuffle_buffer: int = bounded(1000, ge=1)  # streaming: rows the shuffle draws from (1 = stream order)
    packing: bool = False  # several samples per row up to max_length, none attending to another
    group_by_length: bool = False  # batches of similar length (not with streaming)
    options: dict = field(default_factory=dict)  # source-specific options


@dataclass
class TrainConfig:
    stage: Stage = "align"  # which components train
    output_dir: str = "runs/omnilm"
    batch_size: int = bounded(8, ge=1)
    grad_accum: int = bounded(1, ge=1)
    lr: float = bounded(1e-3, gt=0, le=10)  # AdamW diverges long before 10; larger is a typo
    lr_scale: dict = bounded(factory=dict, ge=0, le=100)  # component -> lr multiplier, e.g. {lora: 0.5}
    weight_decay: float = bounded(0.0, ge=0)
    warmup_steps: int = bounded(0, ge=0)
    max_steps: int = bounded(1000, ge=1)
    epochs: Optional[int] = bounded(None, ge=1)  # if set, max_steps = epochs * steps per epoch
    max_grad_norm: float = bounded(1.0, ge=0)  # 0 = no clipping
    mixed_precision: MixedPrecision = "auto"
    seed: int = bounded(0, ge=0, lt=SEED_LIMIT)
    log_every: int = bounded(10, ge=1)
    save_every: int = bounded(500, ge=1)
    keep_checkpoints: int = bounded(2, ge=1)  # resume needs at least the newest
    gradient_checkpointing: bool = False


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass `cls` from a plain dict, checking keys and types recursively."""
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(path, unknown[0])!r}; valid keys under {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(hint, value, path: str):
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: must not be empty")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if typing.get_origin(hint) is Literal:
        return _choice(value, typing.get_args(hint), path)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(_coerce(list, value, path))]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            pass
    expected = {int: int, float: float, str: str, bool: bool, list: list, dict: dict}.get(hint, hint)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{path}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_overrides(overrides: list[str]) -> dict:
    """`["train.lr=1e-4", "--data.limit=10"]` -> nested dict; values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[leaf] = yaml.safe_load(raw) if raw != "" else None
    return nested


def merge(base: dict, update: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in update.items():
        where = _join(path, key)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, where)
        elif isinstance(value, dict) and out.get(key) is not None:
            # Setting keys inside a list or scalar would silently throw the recipe's value away.
            raise ConfigError(f"{where}: expected a mapping, got {type(out[key]).__name__} {out[key]!r}")
        else:
            out[key] = value
    return out


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Recipe:
    """Read a YAML recipe (or start from defaults) and apply overrides, then validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        require_a_section(data, path)
    if overrides:
        data = merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    recipe = from_dict(Recipe, data)
    validate(recipe)
    return recipe


def require_a_section(data, path: Path) -> None:
    """An empty file (or one whose sections are all empty) would silently be "all defaults":
    a run of microsoft/phi-2 on no data that the author never asked for."""
    sections = [f.name for f in dataclasses.fields(Recipe)]
    if data is None or isinstance(data, dict) and set(data) <= set(sections) and all(
            value in (None, {}) for value in data.values()):
        raise ConfigError(f"{path}: the recipe is empty; it needs at least one of the sections "
                          f"{', '.join(sections)} (see configs/ for examples)")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def _choice(value, allowed: tuple[str, ...], path: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _choices_of(cls, path: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted key -> the names it accepts, for every Literal field under dataclass `cls`."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
        if typing.get_origin(inner) is Literal:
            found[_join(path, name)] = typing.get_args(inner)
        elif dataclasses.is_dataclass(inner):
            found.update(_choices_of(inner, _join(path, name)))
    return found


CHOICES = _choices_of(Recipe)  # e.g. {"train.stage": ("align", ...), "model.image.projector.type": (...)}


def validate(recipe: Recipe) -> None:
    """Value checks that types alone cannot express (and the choices again, for recipes changed in code)."""
    for dotted, allowed in CHOICES.items():
        value = _get(recipe, dotted)
        if value is not None:
            _choice(value, allowed, dotted)
    check_bounds(recipe)
    if recipe.model.llm.quantization == "nf4" and recipe.model.llm.lora is None:
        raise ConfigError("model.llm.quantization=nf4 needs model.llm.lora (a 4-bit base cannot train)")
    if recipe.model.audio_route == "native" and recipe.model.audio is None:
        raise ConfigError("model.audio_route=native needs model.audio (an audio encoder)")
    if recipe.model.audio_route == "transcribe" and recipe.model.transcriber is None:
        raise ConfigError("model.audio_route=transcribe needs model.transcriber (backend, name_or_path)")
    for name in ("image", "audio"):
        if getattr(recipe.model, name) is not None:
            check_encoder(getattr(recipe.model, name), f"model.{name}")
    check_data_keys(recipe)
    lora = recipe.model.llm.lora
    if lora is not None and not lora.target_modules:
        raise ConfigError("model.llm.lora.target_modules: must name at least one layer of the LLM")


HF_ONLY = ("name", "revision", "columns", "streaming")


def check_data_keys(recipe: Recipe) -> None:
    data = recipe.data
    if data.source != "hf":
        for key in HF_ONLY:
            if getattr(data, key) != getattr(DataConfig(), key):
                raise ConfigError(f"data.{key}: only for data.source=hf, not {data.source}")
    if data.streaming and data.group_by_length:
        raise ConfigError("data.group_by_length needs every sample's length up front; "
                          "it cannot be used with data.streaming")
    if data.streaming and recipe.train.epochs:
        raise ConfigError("train.epochs needs the data set's size, which a stream does not know; "
                          "with data.streaming set train.max_steps")
    for role, column in data.columns.items():
        if not isinstance(column, str) or not column:
            raise ConfigError(f"data.columns.{role}: expected a column name, got {column!r}")


# EncoderConfig keys that some encoder types read and others ignore (see EncoderSpec.options).
TYPE_OPTIONS = sorted({option for spec in ENCODERS.values() for option in spec.options})


def check_encoder(enc: EncoderConfig, where: str) -> None:
    """The encoder's registry entry decides its slot, whether it needs weights and which options apply."""
    spec = encoder_spec(enc.type, f"{where}.type")
    slot = where.rsplit(".", 1)[-1]
    if spec.modality != slot:
        raise ConfigError(f"{where}.type {enc.type!r} is an {spec.modality} encoder; it cannot be model.{slot}")
    if spec.needs_weights and enc.name_or_path is None and enc.random_config is None:
        raise ConfigError(f"{where}.name_or_path: a {enc.type} encoder needs weights: set name_or_path "
                          "(a pretrained folder or hub id) or random_config (random init)")
    if enc.projector.pixel_shuffle > 1 and not spec.patch_grid:
        users = ", ".join(name for name, s in ENCODERS.items() if s.patch_grid)
        raise ConfigError(f"{where}.projector.pixel_shuffle: for encoders with a square patch grid ({users}) "
                          f"only, not {enc.type}")
    hidden = enc.projector.hidden_size
    if enc.projector.type == "ultravox" and hidden is not None and hidden % 2:
        raise ConfigError(f"{where}.projector.hidden_size = {hidden}: the ultravox projector's SwiGLU halves it, "
                          f"so it must be even; try {hidden + 1}")
    defaults = EncoderConfig()
    for option in TYPE_OPTIONS:
        if option not in spec.options and getattr(enc, option) != getattr(defaults, option):
            users = ", ".join(name for name, s in ENCODERS.items() if option in s.options)
            raise ConfigError(f"{where}.{option}: for {users} encoders only, not {enc.type}")
    check_tiling(enc, where)


def check_tiling(enc: EncoderConfig, where: str) -> None:
    """Each tiling's own settings, and none of another's; pinpoints against the tower's size are
    checked where that size is known (omnilm.model.tiling.tiling_of)."""
    if enc.grid_pinpoints is not None and enc.tiling != "anyres":
        raise ConfigError(f"{where}.grid_pinpoints: only for tiling: anyres, not {enc.tiling}")
    if enc.max_tiles is not None and enc.tiling != "split":
        raise ConfigError(f"{where}.max_tiles: only for tiling: split, not {enc.tiling}")
    for i, point in enumerate(enc.grid_pinpoints or ()):
        if len(point) != 2 or any(side < 1 for side in point):
            raise ConfigError(f"{where}.grid_pinpoints[{i}]: expected [height, width] in pixels, got {point!r}")
    if enc.tiling != "none" and enc.projector.tokens_per_feature != 1:
        raise ConfigError(f"{where}.projector.tokens_per_feature: must be 1 with tiling: {enc.tiling} "
                          "(the tile layout places one token per feature)")


def check_bounds(node, path: str = "") -> None:
    """Every number in the recipe must be finite, and within its field's bounds where it has them."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, where = getattr(node, f.name), _join(path, f.name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, where)
        else:
            kind = "an integer" if int in (hints[f.name], *typing.get_args(hints[f.name])) else "a finite number"
            _check_number(value, where, f.metadata.get("bounds"), kind)


def _check_number(value, where: str, bounds: Bounds | None, kind: str = "a finite number") -> None:
    if isinstance(value, dict):  # a bounded mapping bounds each of its values
        for key, item in value.items():
            _check_number(item, f"{where}.{key}", bounds)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_number(item, f"{where}[{i}]", None)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        if bounds is not None and value is not None:
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    elif isinstance(value, float) and not math.isfinite(value) or bounds is not None and not bounds.allows(value):
        raise ConfigError(f"{where} = {value!r}: must be {kind}{f' {bounds}' if bounds else ''}")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part) if obj is not None else None
    return obj
