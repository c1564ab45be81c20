"""Saved model folders: what `from_pretrained` reads, how a run becomes one, how older runs load.

A model folder is transformers' own layout: `config.json` (OmniConfig), safetensors weights
(sharded past `MAX_SHARD`) and the processor's files, loadable by `OmniLM.from_pretrained` /
`OmniProcessor.from_pretrained` or the Auto classes. A training run's folder becomes one when the
run ends (`write_run_model`), beside what only training reads: `recipe.yaml` (provenance),
`weights.safetensors` (the trained parts, which a later stage's `model.init_from` starts from)
and `checkpoints/`. A run folder from before this layout (recipe + trained weights only) still
loads: its model is rebuilt from the recipe, and `omnilm convert RUN` writes the files once.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch

from omnilm.config import load_recipe, save_recipe
from omnilm.errors import OmniError
from omnilm.files import atomic_folder, recover, temp_path
from omnilm.model.checkpoint import nbytes

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
RECIPE_FILE = "recipe.yaml"
MAX_SHARD = "2GB"  # transformers' size at which safetensors weights split into shards


def is_model_folder(path) -> bool:
    """A folder with an OmniConfig `config.json` (written last, so a complete one)."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("model_type") == "omnilm"
    except (OSError, ValueError):
        return False


def save_model_files(model, processor, folder: Path, dtype: torch.dtype | None = None) -> None:
    """config.json, weights and processor files into `folder` (LoRA merged, 4-bit dequantized)."""
    model.save_pretrained(folder, dtype=dtype, max_shard_size=MAX_SHARD)
    processor.save_pretrained(folder)


def write_model_folder(model, processor, out, dtype: torch.dtype | None = None, card=None) -> Path:
    """A self-contained model folder at `out`, written whole or not at all; `recipe.yaml` beside
    the model files when the model knows its recipe, and `card(folder)` writes the model card."""
    out = Path(out)
    with atomic_folder(out, nbytes(model.state_dict())) as tmp:
        save_model_files(model, processor, tmp, dtype)
        if model.recipe is not None:  # what trained it, for provenance (loading never reads it)
            recipe = copy.deepcopy(model.recipe)
            recipe.model.init_from = None
            save_recipe(recipe, tmp / RECIPE_FILE)
        if card is not None:
            card(tmp)
    return out


def write_run_model(run_dir) -> Path:
    """A finished (or converted) run folder made loadable by `from_pretrained`: its model rebuilt
    from the recipe and trained weights, then its files moved in one by one, config.json last, so
    a folder with config.json has all of them."""
    run_dir = Path(run_dir)
    model, processor = load_run(run_dir)
    tmp = temp_path(run_dir / "model")  # a kill leaves it for the next run's clean-up
    with atomic_folder(tmp, nbytes(model.state_dict())) as staging:
        save_model_files(model, processor, staging)
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)  # the old marker goes first, the new comes last
    files = sorted(tmp.iterdir(), key=lambda f: f.name == CONFIG_FILE)
    for file in files:
        os.replace(file, run_dir / file.name)
    tmp.rmdir()
    return run_dir


def load_pretrained(path, device=None, audio_route: str | None = None,
                    transcriber=None) -> tuple:
    """A model folder (an export, a finished run) or an older run folder -> (model in eval mode,
    its processor). `audio_route` / `transcriber` (a TranscriberConfig) choose how audio is read
    at inference."""
    path = Path(path)
    recover(path)  # an export killed while replacing this folder left the previous one aside
    if is_model_folder(path):
        return _from_model_folder(path, device, audio_route, transcriber)
    if (path / RECIPE_FILE).is_file():
        log.info("%s is a run folder from before model folders: rebuilding it from its recipe "
                 "(`omnilm convert %s` writes its model files once, to load it faster)", path, path)
        return load_run(path, device, audio_route, transcriber)
    raise OmniError(f"{path} is not an omnilm model or run folder (no {CONFIG_FILE} or {RECIPE_FILE})")


def _from_model_folder(path: Path, device, audio_route, transcriber):
    from omnilm.model.build import resolve_dtype
    from omnilm.model.omni import OmniLM
    from omnilm.model.processing import OmniProcessor

    where = torch.device(device) if device is not None else torch.device("cpu")
    model = OmniLM.from_pretrained(path, dtype=resolve_dtype("auto", where), device_map={"": str(where)})
    processor = OmniProcessor.from_pretrained(path)
    processor.choose_audio_route(audio_route, transcriber)
    if (path / RECIPE_FILE).is_file():
        model.recipe = load_recipe(path / RECIPE_FILE)  # provenance (model cards, exports)
    return model.requires_grad_(False).eval(), processor


def load_run(path, device=None, audio_route: str | None = None, transcriber=None) -> tuple:
    """A run folder rebuilt from its recipe: the pretrained parts it names, then its trained weights."""
    from omnilm.config import validate
    from omnilm.model.build import build_model
    from omnilm.model.checkpoint import load_trained_weights, weights_file

    path = Path(path)
    recipe = load_recipe(path / RECIPE_FILE)
    recipe.model.init_from = None  # the folder's own weights already include what it started from
    if transcriber is not None:
        recipe.model.transcriber = transcriber
    if audio_route is not None:
        recipe.model.audio_route = audio_route
    validate(recipe)
    model, processor = build_model(recipe, root=path, device=device)
    if weights_file(path) is not None:
        load_trained_weights(model, path)
    return model.eval(), processor
