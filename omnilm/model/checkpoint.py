"""What a run saves and loads: trained weights (projectors, LoRA, anything unfrozen), written
atomically so an interrupted write never leaves a half file behind."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omnilm.errors import OmniError

WEIGHTS = "weights.safetensors"
CHECKPOINTS = "checkpoints"


def trained_state_dict(model) -> dict[str, torch.Tensor]:
    """Parameters that train in some stage: projectors always, whatever requires grad, and
    whatever came from `init_from` (a fine-tuned LLM stays in the runs that build on it)."""
    return {
        name: param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad or name.startswith("projectors.") or "lora_" in name or name in model.inherited
    }


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def save_trained_weights(model, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(trained_state_dict(model), folder / WEIGHTS)
    return folder / WEIGHTS


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def weights_file(folder) -> Path | None:
    """A run's final weights, else its latest checkpoint's; or an export's weights."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return folder / WEIGHTS
    ckpts = checkpoint_dirs(folder)
    return ckpts[-1] / WEIGHTS if ckpts else None


def load_trained_weights(model, folder, partial: bool = False) -> list[str]:
    """Load saved trained weights into `model`. `partial` (init_from) loads the keys both share,
    e.g. a stage-1 projector into a stage-2 model with LoRA; otherwise every key must fit."""
    file = weights_file(folder)
    if file is None:
        raise OmniError(f"no trained weights in {folder} (expected {WEIGHTS} or {CHECKPOINTS}/step-*)")
    saved = load_file(str(file))
    own = dict(model.named_parameters())
    unknown = [k for k in saved if k not in own]
    if unknown and not partial:
        raise OmniError(f"{file} does not fit this model: unknown keys such as {unknown[0]!r}")
    loaded = []
    with torch.no_grad():
        for name, tensor in saved.items():
            if name not in own:
                continue
            if own[name].shape != tensor.shape:
                raise OmniError(f"{file}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor.to(own[name].dtype))
            loaded.append(name)
    if not loaded:
        raise OmniError(f"{file}: none of its weights match this model")
    return loaded
