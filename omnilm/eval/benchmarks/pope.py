"""POPE (object hallucination): lmms-lab/POPE, split test, as lmms-eval's `pope` task scores it
(lmms_eval/tasks/pope/pope.yaml and utils.py).

Facts followed from lmms-eval: the prompt is the stripped question + "\\nAnswer the question using
a single word or phrase."; the prediction is the whole reply lowercased and stripped, so only a
bare "yes" or "no" counts: "Yes," or "no." is neither, wrong for accuracy and counted by neither
precision (replies "yes") nor recall's false negatives (replies "no"). lmms-eval's yes_ratio is
the share of *ground-truth* "yes"; `answered_yes_ratio` beside it is the share of replies that
are "yes" (the POPE paper's yes-ratio). Scores overall and per category (adversarial, popular, random).
"""
from __future__ import annotations

from omnilm.eval.benchmarks.media import column
from omnilm.eval.benchmarks.spec import Benchmark, Item
from omnilm.eval.benchmarks.yes_no import SHORT_ANSWER, image_question, yes_no_target

CATEGORIES = ("adversarial", "popular", "random")


class Pope(Benchmark):
    name = "pope"
    hub_id = "lmms-lab/POPE"
    config_name = None
    split = "test"
    revision = None
    lmms_eval_task = "pope (lmms_eval/tasks/pope/pope.yaml, utils.py)"
    max_new_tokens = 128  # pope.yaml's generation_kwargs

    def items(self, rows):
        for row in rows:
            question, category = column(row, "question").strip(), column(row, "category")
            question_id = str(column(row, "question_id", (str, int)))
            yield Item(id=f"{category}/{question_id}", sample=image_question(row, question + SHORT_ANSWER),
                       target=yes_no_target(row), meta={"category": category, "question_id": question_id})

    def extract(self, reply: str, item: Item) -> str:
        return reply.lower().strip()

    def score(self, results: list[dict]) -> dict[str, float]:
        scores = confusion_scores(results)
        for category in sorted({r["meta"]["category"] for r in results}):
            chosen = [r for r in results if r["meta"]["category"] == category]
            scores |= {f"{category}/{key}": value for key, value in confusion_scores(chosen).items()}
        return scores

    def summary(self, scores: dict[str, float]) -> str:
        parts = [f"{c} acc {100 * scores[f'{c}/accuracy']:.1f} F1 {100 * scores[f'{c}/f1']:.1f}"
                 for c in CATEGORIES if f"{c}/accuracy" in scores]
        return (f"pope: accuracy {100 * scores['accuracy']:.1f} %, F1 {100 * scores['f1']:.1f} %, "
                f"precision {100 * scores['precision']:.1f} %, recall {100 * scores['recall']:.1f} %"
                + (f" ({'; '.join(parts)})" if parts else ""))


def confusion_scores(results: list[dict]) -> dict[str, float]:
    """lmms-eval's pope_aggregate_*: "yes" is the positive class; a reply neither yes nor no is
    only ever wrong."""
    pairs = [(r["prediction"], r["target"]) for r in results]
    true_pos = sum(p == "yes" and t == "yes" for p, t in pairs)
    false_pos = sum(p == "yes" and t == "no" for p, t in pairs)
    false_neg = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    return {"accuracy": sum(p == t for p, t in pairs) / len(pairs),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": sum(t == "yes" for _, t in pairs) / len(pairs),
            "answered_yes_ratio": sum(p == "yes" for p, _ in pairs) / len(pairs)}
