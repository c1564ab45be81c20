"""Where the quickstart's CPU time goes, and whether bf16 autocast helps on this CPU. In one run:

  1. a plain 1024^3 matmul, fp32 and bf16, on 1 and 2 threads (GFLOP/s): the machine's figure
     to set beside any timing, so numbers from different CPUs can be compared;
  2. one stage-2 training step (forward + backward, batch 32) and one evaluation batch
     (64 typed test questions, greedy replies of up to 10 tokens), fp32 and under
     torch.autocast("cpu", dtype=torch.bfloat16), with the bf16 / fp32 time ratios;
  3. with --profile, torch.profiler's top operators (self CPU time) of one fp32 step and batch.

    python bench/cpu_bf16.py --run runs/quickstart              # a quickstart run folder
    python bench/cpu_bf16.py --run runs/qs --profile --repeat 3

The run folder needs stage1 (stage 2 starts from it), stage2 (evaluated) and features; a
`--fast --skip-audio` run has them. Say the machine's load (`uptime`) beside the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnilm, not an installed one

from omnilm.data.feature_cache import open_recipe_cache  # noqa: E402
from omnilm.eval.runner import generate_texts, split_prompt  # noqa: E402
from omnilm.model.build import build_model  # noqa: E402
from omnilm.model.saved import load_pretrained
from omnilm.tasks.easyvqa.evaluation import EVAL_BATCH, REPLY_TOKENS, eval_samples  # noqa: E402
from omnilm.tasks.easyvqa.quickstart import FAST, stage_recipe  # noqa: E402
from omnilm.training.batches import training_data  # noqa: E402
from omnilm.training.stages import apply_stage  # noqa: E402

MATMUL = 1024


def matmul_gflops(dtype: torch.dtype, threads: int, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of an [N, N] @ [N, N] matmul in `dtype` on `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL, MATMUL, dtype=dtype), torch.randn(MATMUL, MATMUL, dtype=dtype)  # [N, N]
    for _ in range(3):  # warm-up: thread pool, packing buffers
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    elapsed = time.perf_counter() - started
    torch.set_num_threads(before)
    return 2 * MATMUL**3 * count / elapsed / 1e9


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def precision(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def stage2_batch(run: Path):
    """The stage-2 model as training builds it (from the run's stage 1) and its first batch, drawn
    from the questions a --fast run caches features for (a full run caches more)."""
    recipe = stage_recipe("stage2", run, steps=100, init_from=run / "stage1", limit=FAST.train_questions)
    model, processor = build_model(recipe)
    apply_stage(model, recipe.train.stage)
    data = training_data(recipe, processor, open_recipe_cache(recipe), world=1, rank=0)
    return model, next(iter(data.loader(start=0)))


def train_step(model, batch, bf16: bool) -> None:
    """Forward and backward of one batch (the optimizer step is the same in both precisions)."""
    with precision(bf16):
        loss = model(**batch.model_inputs()).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def eval_batch(model, processor, prompts, bf16: bool) -> list[str]:
    with torch.no_grad(), precision(bf16):
        return generate_texts(model, processor, prompts, REPLY_TOKENS, EVAL_BATCH, progress=False)


def timed(fn, repeat: int):
    """(median seconds of `repeat` calls, what the untimed warm-up call before them returned)."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], result


def profile(fn, label: str, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n{label}: top operators by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a quickstart run folder (stage1, stage2, features)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of each (median reported)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables (fp32)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"{cpu_name()}, torch {torch.__version__}, {threads} threads, "
          f"bf16 kernels: {torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"\nmatmul {MATMUL}^3 (GFLOP/s)   1 thread   2 threads")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"  {str(dtype).removeprefix('torch.'):<24}" + "".join(f"{matmul_gflops(dtype, t):>10.0f}" for t in (1, 2)))

    model, batch = stage2_batch(args.run)
    model.train()
    step = {bf16: timed(lambda: train_step(model, batch, bf16), args.repeat)[0] for bf16 in (False, True)}
    if args.profile:
        profile(lambda: train_step(model, batch, False), f"stage-2 step, batch {len(batch)}")
    del model, batch

    model, processor = load_pretrained(args.run / "stage2")
    prompts = [split_prompt(s)[0] for s in eval_samples(EVAL_BATCH)]
    batch_s, replies = {}, {}
    for bf16 in (False, True):
        batch_s[bf16], replies[bf16] = timed(lambda: eval_batch(model, processor, prompts, bf16), args.repeat)
    if args.profile:
        profile(lambda: eval_batch(model, processor, prompts, False), f"evaluation batch, {EVAL_BATCH} questions")

    same = sum(a == b for a, b in zip(replies[False], replies[True]))
    print(f"\n{'':<36}{'fp32 (s)':>10}{'bf16 (s)':>10}{'bf16/fp32':>11}")
    for name, t in (("stage-2 step (forward + backward)", step), (f"evaluation batch ({EVAL_BATCH} questions)", batch_s)):
        print(f"  {name:<34}{t[False]:>10.2f}{t[True]:>10.2f}{t[True] / t[False]:>11.2f}")
    print(f"  bf16 replies equal to fp32: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
