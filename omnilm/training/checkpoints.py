"""A run's checkpoints, through Accelerate's save_state / load_state: optimizer, scheduler, each
process's RNG (and under FSDP or DeepSpeed the sharded model and optimizer states, each process
writing its own shard), plus the trained weights gathered into one weights.safetensors that
chat, serve and export read, and state.json (steps, samples, and the micro-batch the data order
resumes from).

Every process writes into checkpoints/step-N.tmp; the main process renames it to step-N once
all are done, so a checkpoint folder exists whole or not at all (the run folder must be on a
file system every node shares). Unsharded runs leave the frozen weights out: they are in base/
or the recipe's pretrained models already.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors.torch import save_file

from omnilm.errors import OmniError
from omnilm.files import DiskFull, atomic_folder, temp_path
from omnilm.model.checkpoint import CHECKPOINTS, WEIGHTS, checkpoint_dirs, is_trained, load_trained_weights, nbytes

STATE = "state.json"
LEGACY_RESUMABLE = "optimizer.pt"  # checkpoints written before save_state: optimizer, scheduler, RNG in one file
SHARDING = (DistributedType.FSDP, DistributedType.DEEPSPEED)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done per process
    samples: int = 0  # samples seen, all processes
    skipped: int = 0  # bad samples skipped (data.skip_bad)


def track(accelerator, scheduler) -> None:
    """Register what save_state keeps beside the prepared model and optimizer."""
    accelerator.register_for_checkpointing(scheduler)  # not prepared: Accelerate would step it once per process
    if accelerator.distributed_type not in SHARDING:
        # The trained weights go to weights.safetensors; the whole model (a frozen 7B LLM too) would be
        # written again at every checkpoint.
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())


def trained_weights(accelerator, model) -> dict[str, torch.Tensor]:
    """The trained parameters as whole CPU tensors, on the main process ({} on the others).
    Every process must call it: under FSDP each parameter is gathered from its shards, one at a
    time, so no process ever holds the frozen rest of the model whole."""
    module = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # ZeRO-3 partitions live inside DeepSpeed
        whole = accelerator.get_state_dict(model)  # gathered on the main process (zero3_save_16bit_model)
        names = {name for name, param in module.named_parameters() if is_trained(module, name, param)}
        return {name: t.detach().to("cpu").contiguous() for name, t in (whole or {}).items() if name in names}
    weights = {}
    for name, param in module.named_parameters():
        if is_trained(module, name, param):
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param  # DTensor shards -> tensor
            if accelerator.is_main_process:
                weights[name] = whole.detach().to("cpu").contiguous()
    return weights


def save_checkpoint(accelerator, model, optimizer, state: TrainState, run_dir: Path, keep: int) -> None:
    final = Path(run_dir) / CHECKPOINTS / f"step-{state.step:07d}"
    weights = trained_weights(accelerator, model)
    accelerator.wait_for_everyone()
    if final.exists():  # saved at this very step already (an interrupt right after a save)
        return
    try:
        needed = nbytes(weights) + nbytes(optimizer.state_dict()) if accelerator.is_main_process else 0
        with _folder_for_all(accelerator, final, needed) as tmp:
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                save_file(weights, str(tmp / WEIGHTS))
                (tmp / STATE).write_text(json.dumps(state.__dict__))  # last: it marks the folder complete
    except DiskFull as err:
        kept = checkpoint_dirs(run_dir)
        raise DiskFull(f"{err} with --resume (from {kept[-1].name}, which is kept)" if kept else str(err)) from None
    if accelerator.is_main_process:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


@contextmanager
def _folder_for_all(accelerator, final: Path, needed: int):
    """atomic_folder for several processes: the main one makes the temporary folder and renames it
    after every process has written its part."""
    if accelerator.is_main_process:
        with atomic_folder(final, needed) as tmp:
            accelerator.wait_for_everyone()
            yield tmp
            accelerator.wait_for_everyone()
    else:
        accelerator.wait_for_everyone()
        yield temp_path(final)
        accelerator.wait_for_everyone()


def read_state(ckpt: Path) -> TrainState:
    return TrainState(**json.loads((Path(ckpt) / STATE).read_text()))


def restore(accelerator, model, ckpt: Path) -> None:
    """Weights, optimizer, scheduler and this process's RNG from `ckpt`. Call it last, after
    everything that builds the run, so the RNG continues exactly where the checkpoint left it."""
    if (ckpt / LEGACY_RESUMABLE).is_file():
        raise OmniError(f"{ckpt} was written by an older omnilm ({LEGACY_RESUMABLE}) that this one cannot resume; "
                        f"finish the run with that version, or start a new run with model.init_from={ckpt.parent.parent}")
    if accelerator.distributed_type not in SHARDING:
        load_trained_weights(accelerator.unwrap_model(model), ckpt)
    accelerator.load_state(str(ckpt))
