"""`omnilm eval --benchmark easyvqa`: the quickstart's typed scoring as a benchmark of the runner.

The quickstart scores its typed questions through it (evaluation.typed_scored). Rows come from
the easy-vqa package: the quickstart's fixed sample of test questions (1000, seeded by
evaluation.EVAL_SEED), or a local copy with --data in the same row schema: id,
question, answer, image (a path, or an image cell as `datasets` stores it), type (yes/no, color,
shape). The prompt is the image-first layout, the reply's last line is the answer (the
quickstart's model first describes the image), scored by VQA exact match, overall and per type,
as evaluation._scored and report.scores do. It lives with its task (the runner names it in
omnilm.eval.benchmarks.BENCHMARKS by string), since the eval layer never imports a task.
"""
from __future__ import annotations

from omnilm.core.sample import Message, Sample
from omnilm.eval.benchmarks.media import column, image_of
from omnilm.eval.benchmarks.spec import Benchmark, Item
from omnilm.eval.metrics import accuracy_by_group, vqa_accuracy
from omnilm.eval.runner import last_line
from omnilm.tasks.easyvqa.data import LAYOUTS
from omnilm.tasks.easyvqa.evaluation import REPLY_TOKENS
from omnilm.tasks.easyvqa.quickstart import FULL
from omnilm.tasks.easyvqa.report import QTYPES

TYPED_IMAGE_FIRST = LAYOUTS["image-first"][0]


def rows_of(samples: list[Sample]) -> list[dict]:
    """The quickstart's typed questions (omnilm.tasks.easyvqa.evaluation.eval_samples) as rows."""
    return [{"id": s.id, "question": s.meta["question"], "answer": s.meta["answer"], "image": str(s.images[0]),
             "type": s.meta["qtype"]} for s in samples]


class EasyVQA(Benchmark):
    name = "easyvqa"
    hub_id = ""  # not on the hub: the easy-vqa package ships it
    split = "test"
    lmms_eval_task = "none (omnilm's own: the quickstart's typed easy-VQA scoring)"
    max_new_tokens = REPLY_TOKENS

    def local_rows(self):
        from omnilm.tasks.easyvqa.evaluation import eval_samples

        return rows_of(eval_samples(FULL.questions))

    def items(self, rows):
        for row in rows:
            question, qtype = column(row, "question"), column(row, "type")
            prompt = Sample([Message("user", TYPED_IMAGE_FIRST.replace("{question}", question))],
                            images=[image_of(row.get("image"))])
            yield Item(id=str(column(row, "id")), sample=prompt, target=column(row, "answer"), meta={"qtype": qtype})

    def extract(self, reply: str, item: Item) -> str:
        return last_line(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        preds, refs = [r["prediction"] for r in results], [r["target"] for r in results]
        by_type = accuracy_by_group(preds, refs, [r["meta"]["qtype"] for r in results])
        return {"accuracy": vqa_accuracy(preds, refs)} | {g: by_type[g][0] for g in QTYPES if g in by_type}

    def summary(self, scores: dict[str, float]) -> str:
        types = ", ".join(f"{g} {100 * scores[g]:.1f} %" for g in QTYPES if g in scores)
        return f"easyvqa: accuracy {100 * scores['accuracy']:.1f} % ({types})"
