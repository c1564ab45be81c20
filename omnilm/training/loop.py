"""The one training loop every stage shares, on HF Accelerate: single process, DDP, FSDP2 or
DeepSpeed ZeRO, one node or several (the accelerate launch configuration decides).

Each optimizer step sees grad_accum micro-batches per process; its loss is the mean over every
learned token of all of them on every process (`_step`), so how a batch is split changes
nothing. Checkpoints (training/checkpoints.py) hold the trained weights, optimizer, scheduler,
each process's RNG and the micro-batch counter, so `resume` continues with the same data order
and dropout masks and reaches the same weights as a run that was never stopped. The data order
has its own generators; the global RNG is left to what the steps draw (dropout) and restored
last, after everything that builds the run.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from tqdm import tqdm

from omnilm.config import Recipe, save_recipe
from omnilm.core.sample import IGNORE
from omnilm.data.feature_cache import open_recipe_cache
from omnilm.errors import ConfigError, TrainingStopped
from omnilm.files import DiskFull, disk_full, is_disk_full
from omnilm.model.build import build_model, materialize_random, portable
from omnilm.model.checks import check_against_model
from omnilm.model.checkpoint import WEIGHTS, atomic_save, checkpoint_dirs, remove_stale_temps
from omnilm.model.saved import RECIPE_FILE, write_run_model
from omnilm.training.batches import training_data
from omnilm.training.checkpoints import TrainState, read_state, restore, save_checkpoint, trained_weights, track
from omnilm.training.memory import GIB, estimate_memory, peak_allocated, strategy_of
from omnilm.training.plot import plot_metrics
from omnilm.training.sharding import build_device, make_accelerator, shard_units
from omnilm.training.stages import apply_stage, component_of
from omnilm.training.stops import StopRequests
from omnilm.training.window import StepWindow

log = logging.getLogger("omnilm.training")


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    losses: list = field(default_factory=list)




def log_tiling(processor, max_length: int) -> None:
    """With tiling an image's tokens grow with its size; the memory estimate counts max_length
    tokens a row whatever fills them, so say how many one image can take."""
    from omnilm.model.tiling import max_tokens, most_tiles

    tiling = processor.image_tiling
    if tiling is None:
        return
    most = max_tokens(tiling)
    log.info("image tiling %s: up to %d tiles and %d tokens per image, within data.max_length=%d",
             tiling.kind, most_tiles(tiling), most, max_length)
    if most >= max_length:
        log.warning("an image can take %d tokens, data.max_length is %d: larger images will be refused; "
                    "raise data.max_length or offer the tiling smaller grids", most, max_length)


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
    loss plot), which ends as a model folder (omnilm.model.saved) that `from_pretrained` loads.
    `resume` continues from the latest checkpoint, bit-exactly on a CPU; each callback gets
    (state, model) after every batch."""
    check_against_model(recipe)  # before any folder is made or weight is read
    try:
        result = _train(recipe, resume=resume, progress=progress, callbacks=callbacks)
        if PartialState().is_main_process:
            write_run_model(result.run_dir)  # after _train, so the training model is gone first
        return result
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
        log_tiling(processor, recipe.data.max_length)
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
    window, losses = StepWindow(), []
    mid_step = False  # an interrupt in a step leaves its RNG draws half made: nothing of it may be saved

    def save():
        window.read(accelerator, state, cfg.lr)  # the counts state.json holds, and no NaN saved
        save_checkpoint(accelerator, model, optimizer, state, run_dir, cfg.keep_checkpoints)

    try:
        with StopRequests() as stops:
            for micro_batches in optimizer_steps(loader, cfg.grad_accum):
                mid_step = True
                window.add_step(_step(model, micro_batches, accelerator, optimizer, cfg.max_grad_norm), micro_batches)
                scheduler.step()
                state.micro += len(micro_batches)
                state.step += 1
                mid_step = False
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    window.read(accelerator, state, cfg.lr)
                    record = window.record(state, scheduler.get_last_lr()[0])
                    peak = peak_allocated(accelerator.device)
                    if peak is not None:  # the CUDA allocator's high-water mark so far, to set beside the estimate
                        record["peak_memory_gib"] = round(peak / GIB, 3)
                    losses.append(record["loss"])
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    sps=f"{record['samples_per_s']:.1f}")
                    if main:
                        with metrics_file.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                if state.step % cfg.save_every == 0 and state.step < total_steps:
                    save()
                for callback in callbacks:
                    callback(state, accelerator.unwrap_model(model))
                signum = stops.agreed(accelerator)
                if signum is not None and state.step < total_steps:
                    raise TrainingStopped(signum, state.step)  # saved just below, as any interrupt after a step
    except KeyboardInterrupt:  # a stop agreed or a callback's, after a step; or a second signal, mid-step
        if not mid_step and state.step > 0:
            save()
        raise
    finally:
        bar.close()
    save()
    weights = trained_weights(accelerator, model)
    if main:
        atomic_save(weights, run_dir / WEIGHTS)
        plot_metrics(metrics_file, run_dir / "loss.png", title=f"{cfg.stage}: {run_dir.name}")
        if state.skipped:
            log.warning("%d bad samples were skipped (data.skip_bad=true)", state.skipped)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, state, losses)


def optimizer_steps(loader, grad_accum: int):
    """The loader's micro-batches, grad_accum at a time: an optimizer step's are counted before
    its first forward (a run starts at a step's first micro-batch, resumed or not)."""
    micro_batches = []
    for batch in loader:
        micro_batches.append(batch)
        if len(micro_batches) == grad_accum:
            yield micro_batches
            micro_batches = []


def _step(model, micro_batches, accelerator, optimizer, max_grad_norm: float) -> torch.Tensor:
    """One optimizer step: forward and backward of each micro-batch, then the update. Its loss is
    the sum of every learned token's loss over all micro-batches and processes, divided by how many
    there are; returns this process's share (a device tensor: reading it would wait for the device)."""
    learned = sum(int((b.labels[:, 1:] != IGNORE).sum()) for b in micro_batches)  # host tensors: no device wait
    # The step's learned tokens on every process: one all-reduce, read by the device only.
    items = accelerator.reduce(torch.tensor(float(learned), device=accelerator.device), "sum").clamp(min=1)
    # accelerate divides each micro-batch's loss by grad_accum and DDP/FSDP average gradients over
    # processes; the token-weighted sum needs neither.
    undo_means = accelerator.gradient_accumulation_steps * accelerator.num_processes
    share = torch.zeros((), device=accelerator.device)
    for batch in micro_batches:
        batch = batch.to(accelerator.device)
        with accelerator.accumulate(model):
            loss = _loss(model, batch, items)
            accelerator.backward(loss * undo_means)
            if accelerator.sync_gradients and max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        share = share + loss.detach().float()
    return share


def _loss(model, batch, items) -> torch.Tensor:
    if len(batch) == 0:  # every sample in it was skipped: a zero loss keeps DDP ranks in step
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
    return model(**batch.model_inputs(), num_items_in_batch=items).loss


__all__ = ["train", "TrainState", "RunResult"]
