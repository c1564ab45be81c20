"""TextVQA: questions about text in images, VQA accuracy over ten human answers.

Follows lmms-eval's task `textvqa_val` (lmms_eval/tasks/textvqa/textvqa_val.yaml,
_default_template_textvqa_yaml, utils.py: textvqa_doc_to_text, textvqa_process_results, which
scores with EvalAI's answer processor and the VQA 10-choose-9 average). OCR tokens stay out of
the prompt, as in the task's default.
"""
from __future__ import annotations

from typing import Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item
from omnilm.eval.metrics import normalize_answer, vqa_soft_accuracy

POST_PROMPT = "\nAnswer the question using a single word or phrase."


class TextVQA(Benchmark):
    name = "textvqa"
    hub_id = "lmms-lab/textvqa"
    config_name = None
    split = "validation"
    revision = None
    lmms_eval_task = "textvqa_val (lmms_eval/tasks/textvqa/textvqa_val.yaml, utils.py)"
    max_new_tokens = 16

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            answers = column(row, "answers", list)
            if len(answers) < 2 or not all(isinstance(a, str) for a in answers):
                raise DataError(f"column 'answers': expected a list of human answers (text), got {answers!r}")
            # str.capitalize, as the task does: first letter upper, the rest lower case.
            text = column(row, "question").capitalize() + POST_PROMPT
            item_id = str(column(row, "question_id", (str, int)))
            yield Item(id=item_id, sample=user_prompt(text, images=[image_of(column(row, "image", object))],
                                                      id=item_id),
                       target=answers, meta={"question_id": row["question_id"], "image_id": row.get("image_id")})

    def extract(self, reply: str, item: Item) -> str:
        return normalize_answer(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        return {"accuracy": percent([vqa_soft_accuracy(r["prediction"], r["target"]) for r in results]),
                "questions": float(len(results))}

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: VQA accuracy {scores['accuracy']:.2f} on {scores['questions']:.0f} questions"
