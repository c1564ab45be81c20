"""The quickstart's evaluation: a fixed sample of easy-VQA test questions (typed in either
layout, spoken, or spoken and transcribed) scored on a trained run with the ordinary evaluator."""
from __future__ import annotations

from pathlib import Path

from omnilm.audio.transcribe import make_transcriber
from omnilm.config import DataConfig
from omnilm.data.audio import load_audio
from omnilm.data.sample import AUDIO_TOKEN, Message, Sample
from omnilm.data.sources import load_samples
from omnilm.eval.runner import evaluate
from omnilm.model.build import load_pretrained
from omnilm.tasks.easyvqa.report import scores

EVAL_SEED = 0  # the fixed test sample: the same whatever --seed trains with
LAYOUT_KEYS = {"image-first": "typed", "question-first": "typed_question_first"}  # results.json keys
# The longest reply, "teal triangle\ntriangle: yes\nyes", is 10 tokens; its last line is whole
# without the end token.
REPLY_TOKENS = 10


def eval_samples(questions: int, spoken_voice: str | None = None, layout: str = "image-first"):
    """The fixed random sample of easy-VQA test questions (typed, or spoken in one voice)."""
    options = {"split": "test", "sample": questions, "seed": EVAL_SEED, "layout": layout}
    if spoken_voice:
        options["spoken"] = spoken_voice
    return load_samples(DataConfig(source="easyvqa", options=options)).samples


def evaluate_run(run_dir: Path, sample_sets: dict, desc: str) -> dict:
    """Load the model once and score each named set of samples."""
    model, processor = load_pretrained(run_dir)
    out = {}
    for name, samples in sample_sets.items():
        # Replies are "blue rectangle\nred: no\nno" (stage 2 describes, checks, answers): the last line is scored.
        result = evaluate(model, processor, samples, "vqa", batch_size=64, max_new_tokens=REPLY_TOKENS, desc=f"{desc}: {name}",
                          answer="last-line")
        out[name] = (scores(result.scores["accuracy"], result.by_group, result.count)
                     | {"predictions": result.predictions})
    return out


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
