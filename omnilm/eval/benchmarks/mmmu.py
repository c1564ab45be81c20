"""MMMU validation: college-level questions over 30 subjects, multiple choice and open.

Follows lmms-eval's task `mmmu_val` (lmms_eval/tasks/mmmu/mmmu_val.yaml, utils.py:
construct_prompt, mmmu_doc_to_visual, mmmu_process_results, mmmu_aggregate_results) in its
default, non-interleaved format: the text keeps its "<image 1>" references and the images
it references come first, ordered by name; answers are read by MMMU's rules (mmmu_rules.py).
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from typing import Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import letters, lettered, percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import user_prompt
from omnilm.eval.benchmarks.mmmu_rules import multi_choice_letter, open_answers, open_correct
from omnilm.eval.benchmarks.spec import Benchmark, Item

MULTI_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
_IMAGE_REFERENCE = re.compile(r"<image (\d+)>")


def _literal_list(text: str, name: str) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise DataError(f"column {name!r}: {text!r} is not a Python list literal") from None
    if not isinstance(value, list):
        raise DataError(f"column {name!r}: {text!r} is not a list")
    return value


def subject_of(question_id: str) -> str:
    """"validation_Art_Theory_12" -> "Art_Theory"."""
    return "_".join(question_id.split("_")[1:-1])


class MMMU(Benchmark):
    name = "mmmu"
    hub_id = "lmms-lab/MMMU"
    config_name = None
    split = "validation"
    revision = None
    lmms_eval_task = "mmmu_val (lmms_eval/tasks/mmmu/mmmu_val.yaml, utils.py)"
    max_new_tokens = 16

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            question_id = column(row, "id")
            kind = column(row, "question_type")
            question = column(row, "question")
            options = _literal_list(column(row, "options"), "options")
            if kind == "multiple-choice":
                text = f"{question}\n{lettered(options)}\n\n{MULTI_CHOICE_PROMPT}"
                target = column(row, "answer")
            elif kind == "open":
                text = f"{question}\n\n{OPEN_PROMPT}"
                answer = column(row, "answer")
                # Some open answers list several accepted values as a Python list literal.
                target = _literal_list(answer, "answer") if answer.startswith("[") else answer
            else:
                raise DataError(f"column 'question_type': {kind!r} is neither 'multiple-choice' nor 'open'")
            referenced = sorted({int(n) for n in _IMAGE_REFERENCE.findall(text)}, key=lambda n: f"image_{n}")
            images = []
            for n in referenced:
                value = row.get(f"image_{n}")
                if value is None:
                    raise DataError(f"the text references <image {n}> but column image_{n} is empty")
                images.append(image_of(value))
            yield Item(id=question_id, sample=user_prompt(text, images=images, id=question_id), target=target,
                       meta={"question_type": kind, "subject": subject_of(question_id),
                             "options": dict(zip(letters(len(options)), options)) if options else {}})

    def extract(self, reply: str, item: Item):
        if item.meta["question_type"] == "multiple-choice":
            return multi_choice_letter(reply, item.meta["options"], seed=item.id)
        return open_answers(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        by_subject: dict[str, list[bool]] = defaultdict(list)
        hits = []
        for r in results:
            if r["meta"]["question_type"] == "multiple-choice":
                right = r["prediction"] in (r["target"] if isinstance(r["target"], list) else [r["target"]])
            else:
                right = open_correct(r["target"], r["prediction"])
            hits.append(right)
            by_subject[r["meta"]["subject"]].append(right)
        scores = {"accuracy": percent(hits), "questions": float(len(hits))}
        for subject in sorted(by_subject):
            scores[f"subject/{subject}"] = percent(by_subject[subject])
        return scores

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: accuracy {scores['accuracy']:.2f} on {scores['questions']:.0f} questions"
