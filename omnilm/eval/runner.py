"""The evaluator behind `omnilm eval` and the quickstart: generate for a data set, then score.

Each sample's last assistant turn is the reference and everything before it is the prompt, so
any source that trains a model (LLaVA JSON, JSONL messages, ASR manifests, easy-VQA) can also
score one. Metrics: `vqa` (exact match after VQA normalization, overall and per group, e.g.
question type), `caption` (BLEU-4 and CIDEr; samples that share a prompt and image pool their
references, as COCO's several captions per image do) and `wer` (word error rate).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from omnilm.core.sample import Sample
from omnilm.errors import ConfigError, DataError
from omnilm.eval.metrics import accuracy_by_group, bleu4, cider, vqa_accuracy, word_error_rate

METRICS = ("vqa", "caption", "wer")
# Enough for a short answer, a caption, a transcript; generation stops at EOS anyway.
MAX_NEW_TOKENS = {"vqa": 8, "caption": 48, "wer": 96}


@dataclass
class EvalResult:
    metric: str
    scores: dict  # vqa: accuracy; caption: bleu4, cider; wer: wer
    count: int  # samples scored
    seconds: float  # generation and scoring time
    by_group: dict = field(default_factory=dict)  # group -> {"accuracy", "count"} (vqa)
    predictions: list = field(default_factory=list)  # {"id", "prediction", "reference", "group"}

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        main = ", ".join(f"{k} {_fmt(k, v)}" for k, v in self.scores.items())
        groups = "".join(f"\n  {g:<10} {100 * v['accuracy']:6.1f} %  ({v['count']})" for g, v in self.by_group.items())
        return f"{self.metric}: {main} on {self.count} samples ({self.seconds:.0f} s){groups}"


def _fmt(key: str, value: float) -> str:
    return f"{100 * value:.1f} %" if key in ("accuracy", "wer") else f"{value:.4f}"


def split_prompt(sample: Sample) -> tuple[Sample, str]:
    """Sample -> (the prompt: every turn before the last assistant one, the reference text)."""
    last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=None)
    if last is None or not any(m.role == "user" for m in sample.messages[:last]):
        raise DataError(sample.about("needs a user turn followed by an assistant turn to score"))
    prompt = Sample(sample.messages[:last], sample.images, sample.audios, sample.id, sample.meta)
    return prompt, sample.messages[last].content


def generate_texts(model, processor, prompts: list[Sample], max_new_tokens: int, batch_size: int = 32,
                   progress: bool = True, desc: str = "evaluating") -> list[str]:
    """Greedy answers for each prompt, in order, in batches (with a progress bar)."""
    from omnilm.audio.route import Transcription
    from omnilm.generation import generate
    from omnilm.generation_settings import GenerationSettings

    config = GenerationSettings(max_new_tokens=max_new_tokens)
    transcription = Transcription.for_processor(processor)  # the transcription route's text, before the processor
    texts: list[str] = []
    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = [transcription(p)[0] for p in prompts[start:start + batch_size]]
            texts += [c.text.strip() for c in generate(model, processor, chunk, config)]
            bar.update(len(chunk))
    return texts


def last_line(reply: str) -> str:
    """The final non-empty line: the answer of a model that first writes what it sees."""
    lines = [line for line in reply.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# Which part of a reply is scored as the answer: all of it, or its last line (a model trained to
# say something first, e.g. what the image shows: "blue rectangle\nno").
ANSWER_PARTS = {"reply": lambda reply: reply, "last-line": last_line}


def evaluate(model, processor, samples: list[Sample], metric: str = "vqa", *, batch_size: int = 32,
             max_new_tokens: int | None = None, progress: bool = True, desc: str = "evaluating",
             answer: str = "reply") -> EvalResult:
    """`answer`: which part of each reply is scored (see ANSWER_PARTS); unless it is the whole
    reply, the predictions keep the whole reply beside the part scored."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if answer not in ANSWER_PARTS:
        raise ConfigError(f"unknown answer part {answer!r}; choose one of {', '.join(ANSWER_PARTS)}")
    if not samples:
        raise DataError("nothing to evaluate: the data set has no samples")
    started = time.perf_counter()
    pairs = [split_prompt(s) for s in samples]
    if metric == "caption":
        return _captions(model, processor, pairs, batch_size, max_new_tokens or MAX_NEW_TOKENS[metric], progress,
                         desc, started)
    prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]
    replies = generate_texts(model, processor, prompts, max_new_tokens or MAX_NEW_TOKENS[metric], batch_size,
                             progress, desc)
    preds = [ANSWER_PARTS[answer](r) for r in replies]
    groups = [str(p.meta.get("qtype", "all")) for p in prompts]
    if metric == "vqa":
        scores = {"accuracy": vqa_accuracy(preds, refs)}
        by_group = {g: {"accuracy": acc, "count": n} for g, (acc, n) in accuracy_by_group(preds, refs, groups).items()}
    else:
        scores, by_group = {"wer": word_error_rate(preds, refs)}, {}
    whole = [{} if answer == "reply" else {"reply": reply} for reply in replies]  # beside the part scored
    rows = [{"id": p.id, "prediction": pred, "reference": ref, "group": g} | extra
            for p, pred, ref, g, extra in zip(prompts, preds, refs, groups, whole)]
    return EvalResult(metric, scores, len(samples), time.perf_counter() - started, by_group, rows)


def _captions(model, processor, pairs, batch_size, max_new_tokens, progress, desc, started) -> EvalResult:
    """One generation per distinct (prompt, media); its references are every caption given for it."""
    grouped: dict[str, tuple[Sample, list[str]]] = {}
    for prompt, ref in pairs:
        key = json.dumps([[m.role, m.content] for m in prompt.messages] + [str(x) for x in prompt.images + prompt.audios])
        grouped.setdefault(key, (prompt, []))[1].append(ref)
    prompts, refs = [p for p, _ in grouped.values()], [r for _, r in grouped.values()]
    preds = generate_texts(model, processor, prompts, max_new_tokens, batch_size, progress, desc)
    scores = {"bleu4": bleu4(preds, refs)}
    scores["cider"] = cider(preds, refs) if len(prompts) >= 2 else float("nan")
    rows = [{"id": p.id, "prediction": pred, "reference": r, "group": "all"} for p, pred, r in zip(prompts, preds, refs)]
    return EvalResult("caption", scores, len(prompts), time.perf_counter() - started, {}, rows)


def default_metric(source: str) -> str:
    return "wer" if source == "asr" else "vqa"


def evaluate_folder(model_dir, source: str, path: str | None = None, *, metric: str | None = None,
                    image_dir: str | None = None, audio_dir: str | None = None, options: dict | None = None,
                    limit: int | None = None, batch_size: int = 32, max_new_tokens: int | None = None,
                    progress: bool = True, answer: str = "reply") -> EvalResult:
    """`omnilm eval`: a saved run or export folder scored on a data set in a public format."""
    from omnilm.config import DataConfig
    from omnilm.data.sources import load_samples
    from omnilm.model.saved import load_pretrained

    cfg = DataConfig(source=source, path=path, image_dir=image_dir, audio_dir=audio_dir,
                     options=dict(options or {}), limit=limit)
    samples = load_samples(cfg).samples
    model, processor = load_pretrained(model_dir)
    return evaluate(model, processor, samples, metric or default_metric(source), batch_size=batch_size,
                    max_new_tokens=max_new_tokens, progress=progress, answer=answer)


def write_result(result: EvalResult, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2))
    return out
