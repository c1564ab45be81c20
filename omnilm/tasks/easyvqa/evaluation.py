"""The quickstart's evaluation: a fixed sample of easy-VQA test questions (typed in either
layout, spoken, or spoken and transcribed) scored on a trained run with the ordinary evaluator."""
from __future__ import annotations

from pathlib import Path

import torch

from omnilm.audio.transcribe import make_transcriber
from omnilm.config import DataConfig
from omnilm.data.audio import load_audio
from omnilm.core.sample import AUDIO_TOKEN, Message, Sample
from omnilm.data.sources import load_samples
from omnilm.eval.runner import evaluate, generate_texts, split_prompt
from omnilm.model.saved import load_pretrained
from omnilm.tasks.easyvqa.report import QTYPES, scores

EVAL_SEED = 0  # the fixed test sample: the same whatever --seed trains with
LAYOUT_KEYS = {"image-first": "typed", "question-first": "typed_question_first"}  # results.json keys
EVAL_BATCH = 64
LAYOUT_CHECK = EVAL_BATCH  # question-first prompts checked against their image-first twins
# The longest reply, "teal triangle\ntriangle: yes\nyes", is 10 tokens; its last line is whole
# without the end token.
REPLY_TOKENS = 10
TYPED_RESULTS = "eval-easyvqa.json"  # the benchmark runner's JSON, in the stage-2 run folder


def eval_samples(questions: int, spoken_voice: str | None = None, layout: str = "image-first"):
    """The fixed random sample of easy-VQA test questions (typed, or spoken in one voice)."""
    options = {"split": "test", "sample": questions, "seed": EVAL_SEED, "layout": layout}
    if spoken_voice:
        options["spoken"] = spoken_voice
    return load_samples(DataConfig(source="easyvqa", options=options)).samples


def evaluate_run(run_dir: Path, sample_sets: dict, desc: str) -> dict:
    """Load the model once and score each named set of samples."""
    model, processor = load_pretrained(run_dir)
    return {name: _scored(model, processor, samples, f"{desc}: {name}") for name, samples in sample_sets.items()}


def evaluate_typed(run_dir: Path, image_first: list[Sample], question_first: list[Sample]) -> dict:
    """The image-first layout scored in full; the question-first one checked against it on its
    first batch (data.media_first makes both one prompt, so scoring both would double the work)."""
    model, processor = load_pretrained(run_dir)
    typed = typed_scored(model, processor, image_first, run_dir / TYPED_RESULTS)
    return {"typed": typed, "typed_question_first": layouts_agree(model, processor, question_first, image_first,
                                                                  typed["predictions"])}


def layouts_agree(model, processor, other: list[Sample], scored: list[Sample], predictions: list[dict]) -> dict:
    """How many of the first LAYOUT_CHECK questions of `other` encode to the same prompt tokens
    as their scored twin and get the same reply. One whole batch, as the scored set's first,
    so padding and batch composition are the same too."""
    pairs = [(split_prompt(a)[0], split_prompt(b)[0]) for a, b in zip(other[:LAYOUT_CHECK], scored)]
    same_prompts = [a.id == b.id and torch.equal(processor.encode_prompt(a).input_ids, processor.encode_prompt(b).input_ids)
                    for a, b in pairs]
    replies = generate_texts(model, processor, [a for a, _ in pairs], REPLY_TOKENS, LAYOUT_CHECK,
                             desc="typed questions: question first, first batch")
    same_replies = [reply == p["reply"] for reply, p in zip(replies, predictions)]
    return {"checked": len(pairs), "of": len(other), "same_prompts": sum(same_prompts),
            "same_replies": sum(same_replies),
            "identical": sum(p and r for p, r in zip(same_prompts, same_replies)) / len(pairs)}


def typed_scored(model, processor, samples: list[Sample], out: Path) -> dict:
    """Typed questions through the benchmark runner (`omnilm eval --benchmark easyvqa`), which
    writes `out`; nothing is resumed, as the model is new each time the quickstart runs."""
    from omnilm.eval.benchmark_runner import predictions_path, run_benchmark
    from omnilm.tasks.easyvqa.benchmark import EasyVQA, rows_of

    predictions_path(out).unlink(missing_ok=True)
    result = run_benchmark(EasyVQA(), model, processor, rows_of(samples), out, batch_size=EVAL_BATCH)
    by_type = {g: {"accuracy": result.scores[g]} for g in QTYPES if g in result.scores}
    predictions = [{"id": r["id"], "prediction": r["prediction"], "reference": r["target"],
                    "group": r["meta"]["qtype"], "reply": r["reply"]} for r in result.predictions]
    return scores(result.scores["accuracy"], by_type, result.count) | {"predictions": predictions}


def _scored(model, processor, samples: list[Sample], desc: str) -> dict:
    # Replies are "blue rectangle\nred: no\nno" (stage 2 describes, checks, answers): the last line is scored.
    result = evaluate(model, processor, samples, "vqa", batch_size=EVAL_BATCH, max_new_tokens=REPLY_TOKENS,
                      desc=desc, answer="last-line")
    return scores(result.scores["accuracy"], result.by_group, result.count) | {"predictions": result.predictions}


def transcribed_samples(spoken_samples, whisper_ct2: str) -> list:
    """The transcription route: each spoken question replaced by what Whisper tiny.en heard, as
    the route puts it into the prompt. The test voice says 107 distinct questions, each heard once."""
    clips = sorted({str(s.audios[0]) for s in spoken_samples})
    heard = dict(zip(clips, make_transcriber("ctranslate2", whisper_ct2).transcribe_many([load_audio(c) for c in clips])))
    out = []
    for s in spoken_samples:
        text = heard[str(s.audios[0])].strip()
        messages = [Message(m.role, m.content.replace(AUDIO_TOKEN, text)) for m in s.messages]
        out.append(Sample(messages, list(s.images), [], s.id, dict(s.meta) | {"transcript": text}))
    return out
