"""The one training loop every stage shares, on HF Accelerate: single process, DDP, FSDP2 or
DeepSpeed ZeRO, one node or several (the accelerate launch configuration decides).

Each optimizer step sees grad_accum micro-batches per process. Checkpoints (training/checkpoints.py)
hold the trained weights, optimizer, scheduler, each process's RNG and the micro-batch counter, so `resume`
continues with the same data order and dropout masks and reaches the same weights as a run
that was never stopped. The data order has its own generators; the global RNG is left to what
the steps draw (dropout) and restored last, after everything that builds the run.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from tqdm import tqdm

from omnilm.config import Recipe, save_recipe
from omnilm.data.feature_cache import open_recipe_cache
from omnilm.errors import ConfigError, OmniError
from omnilm.model.build import RECIPE_FILE, build_model, materialize_random, portable
from omnilm.model.checks import check_against_model
from omnilm.model.checkpoint import (WEIGHTS, DiskFull, atomic_save, checkpoint_dirs, disk_full, is_disk_full,
                                     remove_stale_temps)
from omnilm.training.batches import training_data
from omnilm.training.checkpoints import TrainState, read_state, restore, save_checkpoint, trained_weights, track
from omnilm.training.memory import GIB, estimate_memory, peak_allocated, strategy_of
from omnilm.training.plot import plot_metrics
from omnilm.training.sharding import build_device, make_accelerator, shard_units
from omnilm.training.stages import apply_stage, component_of

log = logging.getLogger("omnilm.training")


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    losses: list = field(default_factory=list)


def mixed_precision(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def lr_schedule(optimizer, warmup: int, total: int):
    """Linear warmup (lr / warmup at the first step, lr at step `warmup`), then cosine decay to zero
    at step `total`: torch's own schedulers, chained."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def param_groups(model, cfg) -> list[dict]:
    groups: dict[str, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(component_of(name), []).append(param)
    unknown = set(cfg.lr_scale) - set(groups)
    if unknown:
        raise ConfigError(f"train.lr_scale names {sorted(unknown)}, which do not train in this stage "
                          f"(training: {', '.join(groups)})")
    return [{"params": ps, "lr": cfg.lr * cfg.lr_scale.get(comp, 1.0), "name": comp} for comp, ps in groups.items()]


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True, callbacks=()) -> RunResult:
    """Train one stage of `recipe` into `recipe.train.output_dir` (weights, checkpoints, metrics,
    loss plot). `resume` continues from the latest checkpoint, bit-exactly on a CPU; each
    callback gets (state, model) after every batch."""
    check_against_model(recipe)  # before any folder is made or weight is read
    try:
        return _train(recipe, resume=resume, progress=progress, callbacks=callbacks)
    except OSError as err:  # metrics, plot, recipe: checkpoints and weights say more themselves
        if not is_disk_full(err):
            raise
        raise DiskFull(f"{disk_full(Path(recipe.train.output_dir))} with --resume") from None


def _train(recipe: Recipe, *, resume: bool, progress: bool, callbacks) -> RunResult:
    cfg = recipe.train
    accelerator = make_accelerator(mixed_precision(cfg.mixed_precision), cfg.grad_accum)
    main = accelerator.is_main_process
    run_dir = Path(cfg.output_dir)
    existing = checkpoint_dirs(run_dir)
    if existing and not resume:
        raise ConfigError(f"{run_dir} already has checkpoints; pass --resume to continue, "
                          "or choose another train.output_dir")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # what a killed run was still writing
        materialize_random(recipe, run_dir / "base")  # once, before the other ranks read it
    accelerator.wait_for_everyone()
    cache = open_recipe_cache(recipe)  # identified by the encoder as the user's recipe names it
    recipe = materialize_random(recipe, run_dir / "base")
    if main:
        save_recipe(portable(recipe, run_dir), run_dir / RECIPE_FILE)

    torch.manual_seed(cfg.seed)
    model, processor = build_model(recipe, device=build_device(accelerator, recipe.model.llm.quantization))
    report = apply_stage(model, cfg.stage)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = training_data(recipe, processor, cache, accelerator.num_processes, accelerator.process_index)
    total_steps = data.total_steps
    if main:
        log.info("stage %s\n%s", cfg.stage, report)
        log.info("%s", data.summary)
        log.info("%s", estimate_memory(model, batch_size=cfg.batch_size, seq_len=recipe.data.max_length,
                                       strategy=strategy_of(accelerator), processes=accelerator.num_processes,
                                       gradient_checkpointing=cfg.gradient_checkpointing,
                                       activation_bytes=2 if accelerator.mixed_precision in ("bf16", "fp16") else None))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = lr_schedule(optimizer, cfg.warmup_steps, total_steps)
    shard_units(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    track(accelerator, scheduler)
    state = read_state(existing[-1]) if resume and existing else TrainState()

    loader = data.loader(start=state.micro)
    if resume and existing:
        restore(accelerator, model, existing[-1])
        if main:
            log.info("resumed from %s at step %d", existing[-1].name, state.step)
    metrics_file = run_dir / "metrics.jsonl"
    bar = tqdm(total=total_steps, initial=state.step, desc=f"train {cfg.stage}", unit="step",
               disable=not (progress and main), dynamic_ncols=True)
    model.train()
    window_loss, window_samples, window_start = [], 0, time.perf_counter()
    losses = []
    try:
        for batch in loader:
            batch = batch.to(accelerator.device)
            with accelerator.accumulate(model):
                loss = _loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.micro += 1
            counts = accelerator.reduce(torch.tensor([len(batch), batch.skipped], device=accelerator.device), "sum")
            state.samples += int(counts[0])
            state.skipped += int(counts[1])
            window_samples += int(counts[0])
            window_loss.append(accelerator.reduce(loss.detach().float(), "mean").item())
            if not math.isfinite(window_loss[-1]):  # NaN weights would be saved as if all went well
                raise OmniError(f"training diverged: the loss is {window_loss[-1]} at step {state.step + 1}; "
                                f"stopped without saving it (try a lower train.lr than {cfg.lr:g})")
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": state.step, "loss": sum(window_loss) / len(window_loss),
                          "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                          "samples": state.samples, "skipped": state.skipped}
                peak = peak_allocated(accelerator.device)
                if peak is not None:  # the CUDA allocator's high-water mark so far, to set beside the estimate
                    record["peak_memory_gib"] = round(peak / GIB, 3)
                losses.append(record["loss"])
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                sps=f"{record['samples_per_s']:.1f}")
                if main:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                window_loss, window_samples, window_start = [], 0, time.perf_counter()
            if state.step % cfg.save_every == 0 and state.step < total_steps:
                save_checkpoint(accelerator, model, optimizer, state, run_dir, cfg.keep_checkpoints)
            for callback in callbacks:
                callback(state, accelerator.unwrap_model(model))
    except KeyboardInterrupt:
        # Nothing is lost: keep what the last complete optimizer step produced.
        if state.micro % cfg.grad_accum == 0 and state.step > 0:
            save_checkpoint(accelerator, model, optimizer, state, run_dir, cfg.keep_checkpoints)
        bar.close()
        raise
    bar.close()
    save_checkpoint(accelerator, model, optimizer, state, run_dir, cfg.keep_checkpoints)
    weights = trained_weights(accelerator, model)
    if main:
        atomic_save(weights, run_dir / WEIGHTS)
        plot_metrics(metrics_file, run_dir / "loss.png", title=f"{cfg.stage}: {run_dir.name}")
        if state.skipped:
            log.warning("%d bad samples were skipped (data.skip_bad=true)", state.skipped)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, state, losses)


def _loss(model, batch) -> torch.Tensor:
    if len(batch) == 0:  # every sample in it was skipped: a zero loss keeps DDP ranks in step
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
    return model(**batch.model_inputs()).loss


__all__ = ["train", "TrainState", "RunResult"]
