"""MMBench (English, dev): multiple choice under circular evaluation.

Follows lmms-eval's task `mmbench_en_dev` (lmms_eval/tasks/mmbench/mmbench_en_dev.yaml,
_default_template_mmbench_en_yaml, en_utils.py: mmbench_doc_to_text; mmbench_evals.py:
create_options_prompt, can_infer_option, can_infer_text, eval_result). A question scores only if
every rotation of its options is answered right. Rows with index >= 1,000,000 are the hub's own
rotated copies (index mod 1,000,000 names the question); this module writes every rotation
itself from the original row, so those copies are skipped and each question is rotated once.
When the letter cannot be inferred from the reply, lmms-eval asks a GPT judge; offline there is
none, so such a reply counts as wrong.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
OPTION_LETTERS = ("A", "B", "C", "D", "E")
COPY_OFFSET = 1_000_000
# Phrases that mean the model declined: can_infer_option maps them to the non-letter "Z".
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"


def _given(value) -> bool:
    """A cell that holds text: the hub marks an absent option or hint as None, NaN or 'nan'."""
    if value is None or value == "nan" or value == "":
        return False
    return not (isinstance(value, float) and math.isnan(value))


def options_of(row: dict) -> list[str]:
    return [row[letter] for letter in OPTION_LETTERS if letter in row and _given(row[letter])]


def rotated(options: list[str], answer: int, rotation: int) -> tuple[dict[str, str], str]:
    """Options shifted left by `rotation` places, and the letter the right answer now has."""
    count = len(options)
    shifted = {OPTION_LETTERS[i]: options[(i + rotation) % count] for i in range(count)}
    return shifted, OPTION_LETTERS[(answer - rotation) % count]


def prompt(question: str, hint, options: dict[str, str]) -> str:
    listed = "There are several options:\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    query = f"{hint} {question} {listed}" if _given(hint) else f"{question} {listed}"
    return f"{query}\n{POST_PROMPT}"


def infer_letter(reply: str, options: dict[str, str]) -> str:
    """The letter MMBench's can_infer reads in a reply: the one option letter among its words,
    else (none or several letters) the one option whose text the reply contains; "" when
    neither settles it."""
    if any(refusal in reply for refusal in _REFUSALS):
        return ""
    words = reply
    for mark in _SEPARATORS:
        words = words.replace(mark, " ")
    named = [letter for letter in options if letter in words.split()]
    if len(named) == 1:
        return named[0]
    lowered = reply.lower()
    contained = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return contained[0] if len(contained) == 1 else ""


class MMBench(Benchmark):
    name = "mmbench"
    hub_id = "lmms-lab/MMBench"
    config_name = "en"
    split = "dev"
    revision = None
    lmms_eval_task = "mmbench_en_dev (lmms_eval/tasks/mmbench/mmbench_en_dev.yaml, en_utils.py, mmbench_evals.py)"
    max_new_tokens = 1024

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            index = column(row, "index", int)
            if index >= COPY_OFFSET:
                continue
            options = options_of(row)
            answer_letter = column(row, "answer")
            if answer_letter not in OPTION_LETTERS[:len(options)]:
                raise DataError(f"column 'answer': {answer_letter!r} is not one of its {len(options)} options")
            image = image_of(column(row, "image", object))
            for rotation in range(len(options)):
                shifted, target = rotated(options, OPTION_LETTERS.index(answer_letter), rotation)
                item_id = f"{index}/{rotation}"
                yield Item(id=item_id,
                           sample=user_prompt(prompt(column(row, "question"), row.get("hint"), shifted),
                                              images=[image], id=item_id),
                           target=target,
                           meta={"index": index, "rotation": rotation, "options": shifted,
                                 "category": row.get("category"), "l2_category": row.get("L2-category")})

    def extract(self, reply: str, item: Item) -> str:
        return infer_letter(reply.strip(), item.meta["options"])

    def score(self, results: list[dict]) -> dict[str, float]:
        rotations: dict[int, list[bool]] = defaultdict(list)
        category: dict[int, str] = {}
        for r in results:
            rotations[r["meta"]["index"]].append(r["prediction"] == r["target"])
            category[r["meta"]["index"]] = r["meta"]["category"]
        solved = {index: all(hits) for index, hits in rotations.items()}
        scores = {"circular_accuracy": percent(list(solved.values())), "questions": float(len(solved))}
        for name in sorted({c for c in category.values() if c is not None}):
            scores[f"category/{name}"] = percent([solved[i] for i in solved if category[i] == name])
        return scores

    def summary(self, scores: dict[str, float]) -> str:
        return (f"{self.name}: circular accuracy {scores['circular_accuracy']:.2f} "
                f"on {scores['questions']:.0f} questions")
