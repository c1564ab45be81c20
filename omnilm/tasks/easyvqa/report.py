"""What the quickstart reports: two baselines, the accuracy table, time and peak memory per phase,
each target with PASS or MISS, results.json (predictions in their own files) and results.png."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from omnilm.eval.metrics import accuracy_by_group, vqa_accuracy
from omnilm.tasks.easyvqa.data import load_easyvqa
from omnilm.training.plot import read_metrics

QTYPES = ("yes/no", "color", "shape")
# results.json key -> its row in the table and the plot
ROWS = {"typed": "typed, image first", "spoken": "spoken, native route", "spoken_transcribed": "spoken, transcribed"}
# What the full quickstart promises on a quiet 2-core CPU, whatever the seed (README, docs/benchmarks.md):
# (name, results.json key, the path to the value inside it, comparison, goal).
TARGETS = [("typed, image first: overall", "typed", ("accuracy",), ">=", 0.96),
           ("typed, image first: yes/no", "typed", ("by_type", "yes/no"), ">=", 0.95),
           ("typed, question first: as image first", "typed_question_first", ("identical",), ">=", 1.0),
           ("spoken (native route): overall", "spoken", ("accuracy",), ">=", 0.88),
           ("typed part (seconds)", "typed_seconds", (), "<=", 600),
           ("whole command (seconds)", "total_seconds", (), "<=", 1200)]


def scores(overall: float, by_group: dict, count: int) -> dict:
    """One row of results.json: accuracy overall and per question type."""
    return {"accuracy": overall, "count": count,
            "by_type": {g: by_group[g]["accuracy"] for g in QTYPES if g in by_group}}


def baselines(samples) -> dict:
    """Majority answer, and the best a model that never sees the image can do here: for each
    question, the answer most often given to that same question in training (train and test
    share their 107 question strings, and answers are skewed per question)."""
    train = load_easyvqa("train")
    majority = Counter(it.answer for it in train).most_common(1)[0][0]
    per_question: dict[str, Counter] = defaultdict(Counter)
    for it in train:
        per_question[it.question][it.answer] += 1
    refs = [s.meta["answer"] for s in samples]
    groups = [s.meta["qtype"] for s in samples]
    out = {}
    for name, preds in (("majority", [majority] * len(samples)),
                        ("blind", [per_question[s.meta["question"]].most_common(1)[0][0]
                                   if s.meta["question"] in per_question else majority for s in samples])):
        by = {g: {"accuracy": a, "count": n} for g, (a, n) in accuracy_by_group(preds, refs, groups).items()}
        out[name] = scores(vqa_accuracy(preds, refs), by, len(samples))
    out["majority"]["answer"] = majority
    return out


def majority_answer_accuracy(fit_split: str = "train", eval_split: str = "test") -> tuple[str, float]:
    """The most common answer of fit_split and its accuracy on eval_split: the floor any model
    must beat ("yes", 37.3 % on test)."""
    majority, _ = Counter(it.answer for it in load_easyvqa(fit_split)).most_common(1)[0]
    refs = [it.answer for it in load_easyvqa(eval_split)]
    return majority, vqa_accuracy([majority] * len(refs), refs)


def print_table(results: dict) -> None:
    """Accuracy per question type, and each model's margin over the blind baseline."""
    blind = results["baselines"]["blind"]
    rows = [("majority answer", results["baselines"]["majority"]), ("blind (no image)", blind)]
    rows += [(label, results[key]) for key, label in ROWS.items() if results.get(key)]
    print(f"\neasy-VQA: {results['typed']['count']} test questions never seen in training (accuracy, %;"
          " in brackets: points over the blind baseline)")
    print(f"  {'':<24}{'overall':>14}" + "".join(f"{q:>14}" for q in QTYPES))
    for k, (name, s) in enumerate(rows):
        cells = [(s["accuracy"], blind["accuracy"])] + [(s["by_type"].get(q, 0), blind["by_type"].get(q, 0))
                                                       for q in QTYPES]
        print(f"  {name:<24}" + "".join(f"{100 * a:6.1f}" + (f" ({100 * (a - b):+5.1f})" if k > 1 else " " * 8)
                                        for a, b in cells))
    if results.get("typed_question_first"):
        print_layout_check(results["typed_question_first"])


def print_layout_check(check: dict) -> None:
    """The question-first layout is not scored again: the recipe reads it as image first."""
    print(f"  typed, question first: not scored again (data.media_first: one prompt); on the first"
          f" {check['checked']} of {check['of']}: {check['same_prompts']} same prompt tokens, {check['same_replies']}"
          " same replies")


def print_phases(results: dict) -> None:
    """Wall time and peak resident memory of each phase."""
    print("\nphases (wall time, peak resident memory):")
    for name, seconds in results["phases"].items():
        print(f"  {name:<18}{seconds:7.0f} s{results['peak_memory_mib'][name]:9,} MiB")
    print(f"  {'whole command':<18}{results['total_seconds']:7.0f} s{results['peak_memory_mib']['whole command']:9,} MiB")


def judge(results: dict) -> list[dict]:
    """Each target the results can speak to, with PASS or MISS."""
    verdicts = []
    for name, key, path, op, target in TARGETS:
        value = results.get(key)
        if value is None:
            continue  # e.g. spoken with --skip-audio
        for part in path:
            value = value.get(part, 0.0)
        passed = value >= target if op == ">=" else value <= target
        verdicts.append({"target": name, "value": value, "op": op, "goal": target, "pass": passed})
    return verdicts


def print_verdicts(verdicts: list[dict], fast: bool) -> None:
    if fast:
        print("\nshortened run (--fast): the targets are for the full run, shown for reference only")
    print("\ntargets:")
    for v in verdicts:
        shown = (lambda x: f"{x:.0f} s") if v["target"].endswith("(seconds)") else (lambda x: f"{100 * x:.1f} %")
        print(f"  {'PASS' if v['pass'] else 'MISS'}  {v['target']:<32} {shown(v['value']):>9}"
              f"  (target {v['op']} {shown(v['goal'])})")
    missed = [v["target"] for v in verdicts if not v["pass"]]
    if missed and not fast:
        print(f"WARNING: {len(missed)} target(s) missed: {', '.join(missed)}. The model is saved all the same; "
              "see docs/benchmarks.md (Offline quickstart) for what each seed reached.")


def write_results(results: dict, out: Path) -> None:
    """results.png, then results.json; each row's predictions go to predictions-<key>.json."""
    results["plot"] = str(plot_results(results, out))
    slim = json.loads(json.dumps(results))
    for key in ROWS:  # predictions go to their own file; results.json stays readable
        if key in slim:
            (out / f"predictions-{key}.json").write_text(json.dumps(slim[key].pop("predictions"), indent=1))
    (out / "results.json").write_text(json.dumps(slim, indent=2))


def plot_results(results: dict, out: Path) -> Path:
    """Loss curves of every stage and accuracy bars per question type, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers (set before pyplot loads)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    for stage, folder in results["stages"].items():
        records = read_metrics(Path(folder) / "metrics.jsonl")
        if records:
            ax_loss.plot([r["step"] for r in records], [r["loss"] for r in records], label=stage)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss per stage", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    bars = {"majority": results["baselines"]["majority"], "blind": results["baselines"]["blind"]}
    bars |= {label: results[key] for key, label in ROWS.items() if results.get(key)}
    groups = ["overall", *QTYPES]
    width = 0.8 / len(bars)
    for k, (name, s) in enumerate(bars.items()):
        values = [100 * s["accuracy"]] + [100 * s["by_type"].get(q, 0) for q in QTYPES]
        ax_acc.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax_acc.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(groups))], groups)
    ax_acc.set(ylabel="accuracy (%)", ylim=(0, 100), title=f"easy-VQA test ({results['typed']['count']} questions)")
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_acc.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
