"""What a run saves and loads: trained weights (projectors, LoRA, anything unfrozen), written
atomically so an interrupted write never leaves a half file or folder behind, and a full disk
is one clear error that leaves the last complete checkpoint as it was."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omnilm.errors import OmniError
from omnilm.files import atomic_file, clean_folder

WEIGHTS = "weights.safetensors"
CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step-(\d+)")


def is_trained(model, name: str, param) -> bool:
    """Parameters that train in some stage: projectors always, whatever requires grad, and
    whatever came from `init_from` (a fine-tuned LLM stays in the runs that build on it)."""
    return param.requires_grad or name.startswith("projectors.") or "lora_" in name or name in model.inherited


def trained_state_dict(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().to("cpu").contiguous()
            for name, param in model.named_parameters() if is_trained(model, name, param)}


def nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) state dict: about what saving it writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path, nbytes(tensors)) as tmp:
        save_file(tensors, str(tmp))


def remove_stale_temps(run_dir: Path) -> None:
    """What a killed run was still writing: checkpoint, base model or weights temporaries."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / CHECKPOINTS, run_dir / "base"):
        clean_folder(folder)


def save_trained_weights(model, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(trained_state_dict(model), folder / WEIGHTS)
    return folder / WEIGHTS


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir()
            if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name)[1]))


def weights_file(folder) -> Path | None:
    """A run's final trained weights, else its latest checkpoint's."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return folder / WEIGHTS
    ckpts = checkpoint_dirs(folder)
    return ckpts[-1] / WEIGHTS if ckpts else None


def _model_folder_projectors(folder: Path) -> dict[str, torch.Tensor]:
    """The projectors of a model folder (an export): the part of it that `init_from` starts from,
    as its LLM is merged and its encoders are the pretrained ones."""
    files = sorted(folder.glob("model*.safetensors"))
    out = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith("projectors.")})
    return out


def _renamed(saved: dict, own: dict) -> dict:
    """Runs saved before frame stacking moved from the Whisper encoder into the audio projector
    name its layers without FrameStack's "inner." (projectors.audio.0.weight, now
    projectors.audio.inner.0.weight)."""
    def current(name: str) -> str:
        if name in own or not name.startswith("projectors."):
            return name
        head, modality, rest = name.split(".", 2)
        stacked = f"{head}.{modality}.inner.{rest}"
        return stacked if stacked in own else name

    return {current(name): tensor for name, tensor in saved.items()}


def load_trained_weights(model, folder, partial: bool = False) -> list[str]:
    """Load saved trained weights into `model`. `partial` (init_from) loads the keys both share,
    e.g. a stage-1 projector into a stage-2 model with LoRA; otherwise every key must fit."""
    file = weights_file(folder)
    if file is None and partial and any(Path(folder).glob("model*.safetensors")):
        file = Path(folder)
        saved = _model_folder_projectors(file)
    elif file is None:
        raise OmniError(f"no trained weights in {folder} (expected {WEIGHTS} or {CHECKPOINTS}/step-*)")
    else:
        saved = load_file(str(file))
    own = dict(model.named_parameters())
    saved = _renamed(saved, own)
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
