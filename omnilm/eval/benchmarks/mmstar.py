"""MMStar: vision-indispensable multiple-choice questions, accuracy per category.

Follows lmms-eval's task `mmstar` (lmms_eval/tasks/mmstar/mmstar.yaml, utils.py:
mmstar_doc_to_text, exact_match "brought from MMStar", mmstar_aggregate_results): each score is
the mean of its l2 categories' accuracies, the average over every l2 category.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# The task drops this yes/no instruction from questions when it adds its own post prompt.
YES_NO_PROMPT = " Please answer yes or no."
# MMStar's own rule: the answer letter is the reply's first character, or follows one of these.
_LEADS = ("(", "option ", "the answer is ")


class MMStar(Benchmark):
    name = "mmstar"
    hub_id = "Lin-Chen/MMStar"
    config_name = None
    split = "val"
    revision = None
    lmms_eval_task = "mmstar (lmms_eval/tasks/mmstar/mmstar.yaml, utils.py)"
    max_new_tokens = 32

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            text = column(row, "question").strip().replace(YES_NO_PROMPT, "") + POST_PROMPT
            item_id = str(column(row, "index", (str, int)))
            yield Item(id=item_id, sample=user_prompt(text, images=[image_of(column(row, "image", object))],
                                                      id=item_id),
                       target=column(row, "answer").strip().upper(),
                       meta={"category": column(row, "category"),
                             "l2_category": column(row, "l2_category")})

    def extract(self, reply: str, item: Item) -> str:
        text = reply.lower().strip().replace("\n", " ")
        for lead in _LEADS:
            if text.startswith(lead) and len(text) > len(lead):
                return text[len(lead)].upper()
        return text[:1].upper()

    def score(self, results: list[dict]) -> dict[str, float]:
        if not results:
            raise DataError(f"{self.name}: no results to score")
        by_l2: dict[str, list[bool]] = defaultdict(list)
        l2_of_category: dict[str, set[str]] = defaultdict(set)
        for r in results:
            by_l2[r["meta"]["l2_category"]].append(r["prediction"] == r["target"])
            l2_of_category[r["meta"]["category"]].add(r["meta"]["l2_category"])
        l2_accuracy = {l2: percent(hits) for l2, hits in by_l2.items()}
        scores = {"average": sum(l2_accuracy.values()) / len(l2_accuracy), "questions": float(len(results))}
        for category in sorted(l2_of_category):
            l2s = l2_of_category[category]
            scores[f"category/{category}"] = sum(l2_accuracy[l2] for l2 in l2s) / len(l2s)
        return scores

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: average {scores['average']:.2f} on {scores['questions']:.0f} questions"
