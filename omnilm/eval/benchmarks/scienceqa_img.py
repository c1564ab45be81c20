"""ScienceQA-IMG: multiple-choice science questions with an image, scored by accuracy.

Follows lmms-eval's task `scienceqa_img` (lmms_eval/tasks/scienceqa/scienceqa_img.yaml,
utils.py: sqa_doc_to_text, sqa_doc_to_target, sqa_process_results).
"""
from __future__ import annotations

from typing import Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import letters, lettered, percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import content_id, user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


class ScienceQAImg(Benchmark):
    name = "scienceqa-img"
    hub_id = "lmms-lab/ScienceQA"
    config_name = "ScienceQA-IMG"
    split = "test"
    revision = None
    lmms_eval_task = "scienceqa_img (lmms_eval/tasks/scienceqa/scienceqa_img.yaml, utils.py)"
    max_new_tokens = 16

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            choices = column(row, "choices", list)
            answer = column(row, "answer", int)
            if not 0 <= answer < len(choices):
                raise DataError(f"column 'answer': {answer} is not an index into its {len(choices)} choices")
            hint = column(row, "hint", (str, type(None)))
            context = f"Context: {hint}\n" if hint else ""
            question = column(row, "question")
            text = f"{context}{question}\n{lettered(choices)}{POST_PROMPT}"
            image = row.get("image")
            images = [image_of(image)] if image is not None else []
            # The dataset has no id column: the question, its choices and its image name it.
            item_id = content_id(question, hint, choices, answer, images[0] if images else None)
            yield Item(id=item_id, sample=user_prompt(text, images=images, id=item_id),
                       target=letters(len(choices))[answer],
                       meta={"subject": row.get("subject"), "category": row.get("category")})

    def extract(self, reply: str, item: Item) -> str:
        # sqa_process_results: the reply is the letter itself, or starts "X." with X upper case.
        reply = reply.strip()
        if reply in letters(26):
            return reply
        if len(reply) >= 2 and reply[0].isupper() and reply[1] == ".":
            return reply[0]
        return ""

    def score(self, results: list[dict]) -> dict[str, float]:
        return {"accuracy": percent([r["prediction"] == r["target"] for r in results]),
                "questions": float(len(results))}

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: accuracy {scores['accuracy']:.2f} on {scores['questions']:.0f} questions"
