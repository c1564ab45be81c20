"""Training plots: loss (and learning rate) over steps from a run's metrics.jsonl."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("omnilm.training")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_file: Path, out: Path, title: str = "training") -> Path | None:
    records = read_metrics(metrics_file)
    if not records:
        return None
    try:
        import matplotlib
    except ImportError:  # a bare GPU image may lack it; the metrics file holds the same numbers
        log.warning("matplotlib is not installed: no %s (the numbers are in %s)", out.name, metrics_file)
        return None

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, [r["loss"] for r in records], color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="loss", title=title)
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in records], color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
