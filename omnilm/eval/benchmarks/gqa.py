"""GQA testdev-balanced: compositional questions about images, scored by exact match.

Follows lmms-eval's task `gqa` (lmms_eval/tasks/gqa/gqa.yaml, utils.py: gqa_doc_to_visual,
gqa_doc_to_text): the questions are config `testdev_balanced_instructions`, the images config
`testdev_balanced_images` of the same dataset, joined by imageId; exact match ignores case and
punctuation.
"""
from __future__ import annotations

import string
from typing import Iterable, Iterator

from omnilm.errors import DataError
from omnilm.eval.benchmarks.choices import percent
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.prompting import user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item

POST_PROMPT = "\nAnswer the question using a single word or phrase."
IMAGES_CONFIG = "testdev_balanced_images"
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match_form(text: str) -> str:
    """What lmms-eval's exact_match compares with ignore_case and ignore_punctuation set."""
    return text.strip().lower().translate(_NO_PUNCTUATION)


def attach_images(instructions: Iterable[dict], image_rows: Iterable[dict]) -> Iterator[dict]:
    """Each instruction row with its image (config IMAGES_CONFIG: columns id, image) as "image"."""
    images = {row["id"]: row["image"] for row in image_rows}
    for number, row in enumerate(instructions):
        image_id = column(row, "imageId")
        if image_id not in images:
            raise DataError(f"gqa instruction row #{number}: image {image_id!r} is not in the {IMAGES_CONFIG} rows")
        yield {**row, "image": images[image_id]}


class GQA(Benchmark):
    name = "gqa"
    hub_id = "lmms-lab/GQA"
    config_name = "testdev_balanced_instructions"
    split = "testdev"
    revision = None
    lmms_eval_task = "gqa (lmms_eval/tasks/gqa/gqa.yaml, utils.py)"
    max_new_tokens = 16
    images_config = IMAGES_CONFIG

    def joined(self, rows, other_config):
        return attach_images(rows, other_config(self.images_config))

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            if "image" not in row:
                raise DataError(f"no image; GQA's images are config {IMAGES_CONFIG!r}, "
                                "joined by imageId with gqa.attach_images")
            item_id = str(column(row, "id", (str, int)))
            yield Item(id=item_id,
                       sample=user_prompt(column(row, "question") + POST_PROMPT,
                                          images=[image_of(row["image"])], id=item_id),
                       target=column(row, "answer"), meta={"image_id": row.get("imageId")})

    def extract(self, reply: str, item: Item) -> str:
        return exact_match_form(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        return {"exact_match": percent([r["prediction"] == exact_match_form(r["target"]) for r in results]),
                "questions": float(len(results))}

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: exact match {scores['exact_match']:.2f} on {scores['questions']:.0f} questions"
