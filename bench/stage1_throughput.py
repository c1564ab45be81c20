"""Stage-1 training throughput: omnilm with cached features, omnilm running the encoder every
step, and a straightforward loop in the style of the original project (encoder every step,
embeddings concatenated by hand, batch 2). All three in one run, on the same data and models.

    python bench/stage1_throughput.py --size tiny            # CPU, seconds
    python bench/stage1_throughput.py --size phi2 --steps 30 # GPU: Phi-2 + TinyCLIP-61M shapes, random weights, bf16

Prints samples/s for each and the ratios; the first steps of each are warm-up and not timed.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from omnilm.config import load_recipe
from omnilm.data.fixtures import make_coco
from omnilm.data.images import load_image
from omnilm.data.sources import load_samples
from omnilm.model.build import build_model
from omnilm.training.cache import cache_features
from omnilm.training.loop import train
from omnilm.training.stages import apply_stage

ROOT = Path(__file__).resolve().parents[1]

PHI2 = {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 32, "num_attention_heads": 32, "partial_rotary_factor": 0.4,
        "max_position_embeddings": 2048}
TINYCLIP_61M = {"model_type": "clip_vision_model", "hidden_size": 640, "intermediate_size": 2560,
                "num_hidden_layers": 12, "num_attention_heads": 10, "image_size": 224, "patch_size": 32}
SMALL_LLM = {"model_type": "phi", "vocab_size": 259, "hidden_size": 256, "intermediate_size": 1024,
             "num_hidden_layers": 4, "num_attention_heads": 8, "max_position_embeddings": 512}
SMALL_VIT = {"model_type": "clip_vision_model", "hidden_size": 192, "intermediate_size": 768,
             "num_hidden_layers": 6, "num_attention_heads": 6, "image_size": 224, "patch_size": 32}


def recipe_for(size: str, data: Path, out: Path, batch: int, steps: int):
    overrides = {"data": {"path": str(data / "annotations" / "captions_train2017.json"),
                          "image_dir": str(data / "train2017"), "num_workers": 2 if size == "phi2" else 0},
                 "train": {"output_dir": str(out), "batch_size": batch, "max_steps": steps, "save_every": 10**9,
                           "log_every": 10**9, "warmup_steps": 0}}
    recipe = load_recipe(ROOT / "configs" / "tiny-stage1.yaml", overrides)
    if size in ("small", "phi2"):
        llm, vit = (PHI2, TINYCLIP_61M) if size == "phi2" else (SMALL_LLM, SMALL_VIT)
        recipe.model.llm.random_config = dict(llm)
        recipe.model.image.random_config = dict(vit)
        if size == "phi2":
            recipe.model.llm.tokenizer = "bytes"  # ids < 259 are valid Phi-2 ids too
            recipe.model.image.end_token_id = 23893
    return recipe


def timed_train(recipe, warmup: int) -> float:
    """samples/s over the steps after `warmup`."""
    marks = []

    def clock(state, model):  # state.samples is summed over processes only at log steps: count steps
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), state.step * recipe.train.batch_size * recipe.train.grad_accum))

    train(recipe, progress=False, callbacks=[clock])
    (t0, s0), (t1, s1) = marks[warmup - 1], marks[-1]
    return (s1 - s0) / (t1 - t0)


def seed_style(recipe, steps: int, warmup: int) -> float:
    """The original's shape: batch 2, the CLIP tower on every step, embeddings joined by hand."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = build_model(recipe, device=device)
    apply_stage(model, "align")
    samples = load_samples(recipe.data).samples
    tok = processor.tokenizer
    encoder, projector, llm = model.encoders["image"], model.projectors["image"], model.llm
    embed = llm.get_input_embeddings()
    end_id = recipe.model.image.end_token_id
    opt = torch.optim.AdamW(projector.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    marks = []
    for step in range(steps):
        pair = [samples[(2 * step + i) % len(samples)] for i in range(2)]
        loss_total = 0.0
        for sample in pair:  # one sample at a time, as the original's collate-free loop did
            pixels = processor.preprocess("image", load_image(sample.images[0])).to(device)
            with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                feats = projector(encoder([pixels])[0].float().unsqueeze(0))  # [1, P, D]
                caption = tok(sample.messages[1].content, add_special_tokens=False, return_tensors="pt").input_ids
                ids = torch.cat([torch.tensor([[end_id]]), caption, torch.tensor([[tok.eos_token_id]])], 1).to(device)
                inputs = torch.cat([feats.to(embed.weight.dtype), embed(ids)], dim=1)  # [1, P+T, D]
                labels = torch.cat([torch.full((1, feats.shape[1] + 1), -100, device=device), ids[:, 1:]], 1)
                loss = llm(inputs_embeds=inputs, labels=labels).loss / 2
            loss.backward()
            loss_total += loss.item()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), 2 * (step + 1)))
    (t0, s0), (t1, s1) = marks[warmup - 1], marks[-1]
    return (s1 - s0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "phi2"], default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="omnilm batch (default 8 on CPU, 32 on GPU)")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    batch = args.batch_size or (32 if torch.cuda.is_available() else 8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_coco(tmp / "coco", count=args.images)
        base = recipe_for(args.size, tmp / "coco", tmp / "run-uncached", batch, args.steps)
        # One materialized base for every mode, so all three train the very same models.
        base.model.seed = 0
        t = time.perf_counter()
        cache = cache_features(base, out=str(tmp / "cache"), batch_size=64, progress=False)
        cache_s = time.perf_counter() - t
        uncached = timed_train(base, args.warmup)
        cached_recipe = recipe_for(args.size, tmp / "coco", tmp / "run-cached", batch, args.steps)
        cached_recipe.data.feature_cache = str(cache.folder)
        cached = timed_train(cached_recipe, args.warmup)
        seed = seed_style(recipe_for(args.size, tmp / "coco", tmp / "run-seed", 2, args.steps), args.steps,
                          args.warmup)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nstage-1 throughput, size={args.size}, {device}, omnilm batch {batch}, {args.steps} steps "
          f"({args.warmup} warm-up)")
    print(f"{'mode':<34}{'samples/s':>12}{'vs seed-style':>15}")
    for name, value in (("seed-style loop (encoder, batch 2)", seed), ("omnilm, encoder every step", uncached),
                        ("omnilm, cached features", cached)):
        print(f"{name:<34}{value:>12.1f}{value / seed:>14.1f}x")
    print(f"caching {len(cache)} images took {cache_s:.1f} s (once per data set)")


if __name__ == "__main__":
    main()
