"""LibriSpeech test-clean: read English speech, word error rate.

Follows lmms-eval's task `librispeech_test_clean` (lmms_eval/tasks/librispeech/
librispeech_test_clean.yaml, utils.py: librispeech_doc_to_text, remove_sp, compute_wer,
librispeech_wer): special tokens and spaces before punctuation removed, Whisper's English then
basic text normalizer on both sides (transformers' copies of them), corpus WER in percent.
Whisper's British-to-American spelling table (english.json, shipped with Whisper checkpoints,
not with transformers) is not applied, so "colour" and "color" count as different words here.
"""
from __future__ import annotations

import re
from functools import cache
from typing import Iterator

from omnilm.eval.benchmarks.media import column
from omnilm.eval.benchmarks.prompting import audio_of, content_id, user_prompt
from omnilm.eval.benchmarks.spec import Benchmark, Item
from omnilm.eval.metrics import word_error_rate

PROMPT = "Please recognize the speech and only output the recognized content:"
_SPECIAL_TOKEN = re.compile(r"<\|.*?\|>")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ?([!,.?;:])")


@cache
def _normalizers():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer
    return EnglishTextNormalizer({}), BasicTextNormalizer()


def transcript_form(text: str) -> str:
    """A reply or reference as lmms-eval compares them: remove_sp, then both Whisper normalizers."""
    text = _SPECIAL_TOKEN.sub(" ", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", re.sub(r"\s+", " ", text)).lstrip(" ")
    english, basic = _normalizers()
    return basic(english(text))


class LibriSpeech(Benchmark):
    name = "librispeech"
    hub_id = "lmms-lab/librispeech"
    config_name = None
    split = "librispeech_test_clean"
    revision = None
    lmms_eval_task = "librispeech_test_clean (lmms_eval/tasks/librispeech/librispeech_test_clean.yaml, utils.py)"
    max_new_tokens = 256

    def items(self, rows) -> Iterator[Item]:
        for row in rows:
            audio = column(row, "audio", object)
            target = column(row, "gt")
            # Rows carry no id column: the audio file's name, else its content, names it.
            path = audio.get("path") if isinstance(audio, dict) else None
            item_id = path or content_id(target, audio_of(audio))
            yield Item(id=item_id,
                       sample=user_prompt(PROMPT, audios=[audio_of(audio)], id=item_id),
                       target=target, meta={"source": row.get("source")})

    def extract(self, reply: str, item: Item) -> str:
        return transcript_form(reply)

    def score(self, results: list[dict]) -> dict[str, float]:
        wer = word_error_rate([r["prediction"] for r in results], [transcript_form(r["target"]) for r in results])
        return {"wer": 100.0 * wer, "utterances": float(len(results))}

    def summary(self, scores: dict[str, float]) -> str:
        return f"{self.name}: WER {scores['wer']:.2f}% on {scores['utterances']:.0f} utterances"
