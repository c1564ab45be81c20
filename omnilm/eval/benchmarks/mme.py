"""MME: lmms-lab/MME, split test, as lmms-eval's `mme` task scores it (lmms_eval/tasks/mme/mme.yaml
and utils.py), summed as the MME paper reports.

Facts followed from lmms-eval: the prompt is the stripped question with its " Please answer yes
or no." replaced by "\\nAnswer the question using a single word or phrase."; the reply is read
as lmms-eval's parse_pred_ans does (lowercased, stripped, periods removed; "yes"/"no" as they
are, "y"/"n" alone, else "yes" or "no" within its first four characters, "yes" first; anything
else is "other"). Each image has two questions (question_id is the image): per category,
acc = questions right, acc+ = images with both right, score = 100 * (acc + acc+); perception
sums the 10 perception categories, cognition the 4 cognition ones. An image whose two questions
are not both scored (a --limit cut between them) is left out and counted as `unpaired`.
"""
from __future__ import annotations

from collections import defaultdict

from omnilm.eval.benchmarks.media import column
from omnilm.eval.benchmarks.spec import Benchmark, Item
from omnilm.eval.benchmarks.yes_no import SHORT_ANSWER, image_question, yes_no_target

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
# What every MME question ends with; lmms-eval swaps it for its post_prompt.
YES_OR_NO = " Please answer yes or no."


class MME(Benchmark):
    name = "mme"
    hub_id = "lmms-lab/MME"
    config_name = None
    split = "test"
    revision = None
    lmms_eval_task = "mme (lmms_eval/tasks/mme/mme.yaml, utils.py)"
    max_new_tokens = 16  # mme.yaml's generation_kwargs

    def items(self, rows):
        for row in rows:
            question = column(row, "question").strip().replace(YES_OR_NO, "")
            category, image_id = column(row, "category"), column(row, "question_id")
            yield Item(id=f"{image_id}|{question}", sample=image_question(row, question + SHORT_ANSWER),
                       target=yes_no_target(row), meta={"category": category, "question_id": image_id})

    def extract(self, reply: str, item: Item) -> str:
        return parse_yes_no(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for r in results:
            by_image[r["meta"]["category"]][r["meta"]["question_id"]].append(r["prediction"] == r["target"])
        scores: dict[str, float] = {}
        unpaired = 0
        for category in sorted(by_image):
            pairs = [rights for rights in by_image[category].values() if len(rights) == 2]
            unpaired += sum(len(rights) for rights in by_image[category].values() if len(rights) != 2)
            if not pairs:
                continue
            acc = sum(map(sum, pairs)) / (2 * len(pairs))
            acc_plus = sum(all(rights) for rights in pairs) / len(pairs)
            scores |= {f"{category}/acc": acc, f"{category}/acc+": acc_plus, category: 100 * (acc + acc_plus)}
        scores["perception"] = sum(scores.get(c, 0.0) for c in PERCEPTION)
        scores["cognition"] = sum(scores.get(c, 0.0) for c in COGNITION)
        scores["unpaired"] = float(unpaired)
        return scores

    def summary(self, scores: dict[str, float]) -> str:
        shown = [c for c in PERCEPTION + COGNITION if c in scores]
        unpaired = f"; {scores['unpaired']:.0f} unpaired questions left out" if scores.get("unpaired") else ""
        return (f"mme: perception {scores['perception']:.1f} (of 2000), cognition {scores['cognition']:.1f} "
                f"(of 800) over {len(shown)} categories{unpaired}")


def parse_yes_no(reply: str) -> str:
    """lmms-eval's MME reading of a reply (its parse_pred_ans, from Otter's evaluation)."""
    text = reply.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"
