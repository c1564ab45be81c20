"""The offline quickstart on several training seeds: each seed's accuracies and times, and the
minimum over seeds, which is the number the README publishes. Run:

    .venv/bin/python bench/quickstart_seeds.py --seeds 0 1 2               # typed and spoken (~20 min a seed)
    .venv/bin/python bench/quickstart_seeds.py --seeds 0 1 2 --skip-audio  # the typed part only
    .venv/bin/python bench/quickstart_seeds.py --seeds 0 1 2 --report      # only read finished runs

Each seed trains in its own folder (`--out`/seed-N); a finished stage is reused, so a run that
was stopped continues, and the typed part of a seed can be followed later by its audio part.
The test sample is the same for every seed. Say the machine's load when you record the numbers:
the times depend on it, the accuracies do not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The question-first layout is checked against image first on one batch, not scored (report.py).
ROWS = [("typed, image first", "typed"), ("spoken, native route", "spoken"), ("spoken, transcribed", "spoken_transcribed")]
QTYPES = ("yes/no", "color", "shape")


def run_seed(seed: int, out: Path, skip_audio: bool) -> None:
    command = [sys.executable, "-m", "omnilm.cli", "quickstart", "--seed", str(seed), "--out", str(out)]
    command += ["--skip-audio"] if skip_audio else []
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def cells(scores: dict | None) -> list[str]:
    if not scores:
        return ["-"] * 4
    return [f"{100 * scores['accuracy']:.1f}"] + [f"{100 * scores['by_type'].get(q, 0):.1f}" for q in QTYPES]


def report(results: dict[int, dict]) -> None:
    print("\n| seed | questions | overall | yes/no | colour | shape |\n|---|---|---:|---:|---:|---:|")
    for label, key in ROWS:
        for seed, r in results.items():
            if r.get(key):
                print(f"| {seed} | {label} | " + " | ".join(cells(r[key])) + " |")
        present = [r[key] for r in results.values() if r.get(key)]
        if len(present) > 1:
            worst = {"accuracy": min(s["accuracy"] for s in present),
                     "by_type": {q: min(s["by_type"].get(q, 0) for s in present) for q in QTYPES}}
            print(f"| **min** | {label} | " + " | ".join(f"**{c}**" for c in cells(worst)) + " |")
    print("\n| seed | typed part (s) | whole command (s) | peak memory (MiB) | targets missed |\n|---|---:|---:|---:|---|")
    for seed, r in results.items():
        missed = [t["target"] for t in r.get("targets", []) if not t["pass"]]
        total = r.get("total_seconds") if r.get("spoken") else None
        peak = r.get("peak_memory_mib", {}).get("whole command", "-")
        print(f"| {seed} | {r['typed_seconds']:.0f} | {total if total is None else round(total)} | {peak} | "
              f"{', '.join(missed) or 'none'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"), help="one folder per seed inside")
    parser.add_argument("--skip-audio", action="store_true", help="the typed part only")
    parser.add_argument("--report", action="store_true", help="read finished runs' results.json, train nothing")
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        if not args.report:
            run_seed(seed, folder, args.skip_audio)
        results[seed] = json.loads((folder / "results.json").read_text())
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} now; "
          f"AVX-512: {'yes' if 'avx512f' in Path('/proc/cpuinfo').read_text() else 'no'}")
    report(results)


if __name__ == "__main__":
    main()
