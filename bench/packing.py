"""Padded vs length-grouped vs packed batches, in one run, on the same model and samples.

    OMP_NUM_THREADS=1 python bench/packing.py                   # CPU: a small Phi, ~2 minutes
    python bench/packing.py --hidden 1024 --layers 8 --steps 40  # the same on a GPU

The synthetic set follows LLaVA-Instruct-150K's shape: one image per sample (its cached encoder
features, --image-tokens placeholders) and a conversation whose text length is log-normal
(median --median tokens, sigma --sigma, cut to fit --max-length); the spread is printed. Every
mode trains the stage-1 parts (projector; gradients flow through the frozen LLM) for --steps
optimizer steps of --batch-size samples after 2 warm-up steps:
- padded: the training order's batches, each padded to its longest sample;
- grouped: data.group_by_length's order (similar lengths share a batch), padded;
- packed: the padded mode's batches, packed into rows of --max-length (data.packing).
Padded and packed see the same samples in the same steps, so their losses must agree step by
step: the largest difference is printed. Reports the fraction of pad tokens, samples/s and
tokens/s (real tokens, not padding).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from omnilm.config import load_recipe
from omnilm.core.sample import IGNORE
from omnilm.data.collate import collate
from omnilm.data.dataset import ResumableBatches
from omnilm.data.encoded import Encoded
from omnilm.core.sample import PLACEHOLDER_IDS
from omnilm.model.build import build_model
from omnilm.training.stages import apply_stage

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2


def synthetic_set(count: int, args, enc_dim: int, seed: int = 0) -> list[Encoded]:
    """BOS, the image's placeholders and end token, a user turn, then the learned reply (the
    last 40 %), lengths log-normal like LLaVA-Instruct's conversations."""
    gen = torch.Generator().manual_seed(seed)
    fixed = 1 + args.image_tokens + 1
    items = []
    for _ in range(count):
        text = torch.empty(1).log_normal_(mean=math.log(args.median), std=args.sigma, generator=gen)
        n = int(min(max(text.item(), 8), args.max_length - fixed))
        ids = torch.cat([torch.tensor([256] + [PLACEHOLDER_IDS["image"]] * args.image_tokens + [258]),
                         torch.randint(0, 256, (n,), generator=gen)])
        labels = torch.full_like(ids, IGNORE)
        answer = fixed + int(n * 0.6)
        labels[answer:] = ids[answer:]
        items.append(Encoded(ids, labels, features={"image": [torch.randn(args.image_tokens, enc_dim, generator=gen)]}))
    return items


def run_mode(mode: str, model, items, args) -> dict:
    torch.manual_seed(0)
    model.load_state_dict(args.initial, strict=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    lengths = [len(it.input_ids) for it in items] if mode == "grouped" else None
    order = ResumableBatches(len(items), args.batch_size, 1, 0, seed=0, start=0, total=WARMUP + args.steps,
                             lengths=lengths)
    pack_to = args.max_length if mode == "packed" else None
    losses, real, slots, samples, start = [], 0, 0, 0, None
    for step, indices in enumerate(order):
        if step == WARMUP:
            start = time.perf_counter()
        batch = collate([items[i] for i in indices], pad_id=257, pack_to=pack_to).to(args.device)
        loss = model(**batch.model_inputs()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step >= WARMUP:
            real += sum(len(items[i].input_ids) for i in indices)
            slots += batch.input_ids.numel()
            samples += len(batch)
    if args.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"mode": mode, "pad_fraction": 1 - real / slots, "samples_per_s": samples / elapsed,
            "tokens_per_s": real / elapsed, "mean_loss": statistics.fmean(losses[WARMUP:]), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--median", type=int, default=150, help="median text tokens a conversation")
    ap.add_argument("--sigma", type=float, default=0.7, help="log-normal sigma of the text length")
    ap.add_argument("--image-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    recipe = load_recipe(ROOT / "configs" / "tiny-stage1.yaml", {"data": {"max_length": args.max_length}})
    recipe.model.llm.random_config.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                          num_hidden_layers=args.layers, num_attention_heads=max(4, args.hidden // 64),
                                          max_position_embeddings=args.max_length)
    torch.manual_seed(0)
    model, _ = build_model(recipe, device=args.device)
    apply_stage(model, "align")
    model.train()
    args.initial = {k: v.clone() for k, v in model.state_dict().items()}
    enc_dim = recipe.model.image.random_config["hidden_size"]
    items = synthetic_set(args.samples, args, enc_dim)
    lengths = sorted(len(it.input_ids) for it in items)
    q = statistics.quantiles(lengths, n=10)
    print(f"{args.samples} samples, tokens each: p10 {q[0]:.0f}, median {statistics.median(lengths):.0f}, "
          f"p90 {q[8]:.0f}, max {lengths[-1]} (text log-normal median {args.median}, sigma {args.sigma}, "
          f"+ {args.image_tokens + 2} image tokens); batch {args.batch_size}, rows of up to {args.max_length}; "
          f"Phi hidden {args.hidden} x {args.layers} layers on {args.device}, {torch.get_num_threads()} threads")
    results = [run_mode(mode, model, items, args) for mode in ("padded", "grouped", "packed")]
    base = results[0]["samples_per_s"]
    print(f"{'mode':8} {'pad %':>6} {'samples/s':>10} {'tokens/s':>9} {'vs padded':>9} {'mean loss':>9}")
    for r in results:
        print(f"{r['mode']:8} {100 * r['pad_fraction']:6.1f} {r['samples_per_s']:10.2f} {r['tokens_per_s']:9.0f} "
              f"{r['samples_per_s'] / base:8.2f}x {r['mean_loss']:9.4f}")
    diff = max(abs(a - b) for a, b in zip(results[0]["losses"], results[2]["losses"]))
    print(f"packed vs padded: largest per-step loss difference {diff:.2e} (same samples, same steps)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                        if k not in ("initial", "device")}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
