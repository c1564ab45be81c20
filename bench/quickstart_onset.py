"""When does the quickstart's stage 2 learn each question type? Trains stage 2 from a finished
stage 1 and scores the fixed test sample every --every steps, per question type, so a recipe's
learning curve (and a yes/no answer stuck at the blind baseline) shows while it trains. Run:

    .venv/bin/python bench/quickstart_onset.py --from runs/quickstart --out runs/onset/base
    .venv/bin/python bench/quickstart_onset.py --from runs/quickstart --out runs/onset/first \\
        --set data.options.layout=image-first --seed 1

`--from` is a quickstart run folder with `stage1/` and `features/`; `--set KEY=VALUE` changes the
stage-2 recipe (YAML values). Prints one row per evaluation and writes them to <out>/onset.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnilm.eval.runner import evaluate  # noqa: E402
from omnilm.model.build import build_processor  # noqa: E402
from omnilm.tasks.easyvqa.evaluation import LAYOUT_KEYS, REPLY_TOKENS, eval_samples  # noqa: E402
from omnilm.tasks.easyvqa.quickstart import cache_image_features, stage_recipe  # noqa: E402
from omnilm.tasks.easyvqa.report import QTYPES, baselines  # noqa: E402
from omnilm.training.loop import train  # noqa: E402


def set_key(recipe, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    target = recipe
    for name in path:
        target = target[name] if isinstance(target, dict) else getattr(target, name)
    if isinstance(target, dict):
        target[last] = value
    else:
        setattr(target, last, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="quickstart run with stage1/, features/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--layout", choices=list(LAYOUT_KEYS), action="append",
                        help="score only this layout (repeatable; default: both)")
    args = parser.parse_args()

    recipe = stage_recipe("stage2", args.out, args.steps, args.source / "stage1", seed=args.seed)
    recipe.data.feature_cache = str(args.source / "features" / Path(recipe.data.feature_cache).name)
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(recipe, key, yaml.safe_load(value))
    cache_image_features(recipe)  # a recipe that reads more images than stage 2's adds theirs
    sets = {key: eval_samples(args.questions, layout=layout) for layout, key in LAYOUT_KEYS.items()
            if layout in (args.layout or LAYOUT_KEYS)}
    blind = baselines(next(iter(sets.values())))["blind"]
    print("blind:", {q: round(100 * blind["by_type"][q], 1) for q in QTYPES}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "onset.jsonl").open("a")
    started, done = time.perf_counter(), set()

    def score(state, model) -> None:
        if state.step % args.every or state.step in done:
            return
        done.add(state.step)
        processor = build_processor(recipe)  # training's own, from the same recipe
        row = {"step": state.step, "train_seconds": round(time.perf_counter() - started, 1)}
        for key, samples in sets.items():
            result = evaluate(model, processor, samples, "vqa", batch_size=64, max_new_tokens=REPLY_TOKENS, progress=False,
                              answer="last-line")
            row[key] = {"overall": round(100 * result.scores["accuracy"], 1)} | {
                q: round(100 * result.by_group[q]["accuracy"], 1) for q in QTYPES if q in result.by_group}
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

    train(recipe, resume=True, progress=False, callbacks=[score])


if __name__ == "__main__":
    main()
