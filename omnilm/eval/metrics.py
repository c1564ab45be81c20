"""Scores for generated text: VQA accuracy, BLEU-4 / CIDEr for captions, WER for speech.

Every metric normalizes text itself, so a model is not penalised for "Yes." versus "yes".
Captions are tokenized here (lowercase, punctuation removed, split on whitespace) instead of
with pycocoevalcap's PTBTokenizer, which shells out to Java. The results therefore differ
slightly from published COCO numbers (PTB splits contractions: "don't" -> "do n't"; we give
"dont"), but they are stable, fast and need no JVM. Compare runs with each other, not with papers.
"""
from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Hashable, Sequence

from omnilm.errors import DataError
from omnilm.extras import require

# VQA's answer normalization maps spelled-out numbers to digits so "two" matches "2".
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# A comma inside a number ("1,000") and a decimal point ("2.5") are part of the number.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_APOSTROPHES = re.compile(r"['\u2019]")
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")


def _strip_punctuation(s: str) -> str:
    # Apostrophes vanish ("don't" -> "dont") so contractions stay one word; other marks split
    # words ("t-shirt" -> "t shirt") as in the VQA evaluation script.
    s = _THOUSANDS_COMMA.sub("", s)
    s = _NON_DECIMAL_PERIOD.sub(" ", s)
    s = _APOSTROPHES.sub("", s)
    s = _PUNCTUATION.sub(lambda m: m.group() if m.group() == "." else " ", s)
    return s


def normalize_answer(s: str) -> str:
    """VQA-style normalization: lowercase, no punctuation or articles, number words as digits."""
    words = _strip_punctuation(s.lower()).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _normalize_words(s: str) -> str:
    """Lowercase and punctuation removed, every word kept (for captions and transcripts)."""
    return " ".join(_strip_punctuation(s.lower()).split())


def _check_lengths(predictions: Sequence, references: Sequence, what: str) -> None:
    if len(predictions) != len(references):
        raise DataError(
            f"{what}: {len(predictions)} predictions but {len(references)} references; "
            "they must be paired one to one"
        )
    if len(predictions) == 0:
        raise DataError(f"{what}: no predictions to score")


def _answer_set(reference: str | Sequence[str]) -> set[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    return {normalize_answer(r) for r in refs}


def _is_correct(prediction: str, reference: str | Sequence[str]) -> bool:
    return normalize_answer(prediction) in _answer_set(reference)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions that equal (after normalize_answer) an acceptable answer.

    A reference is one answer or a list of acceptable ones; any match counts. This is plain
    exact match, not the VQA v2 "min(#humans agreeing / 3, 1)" soft score (vqa_soft_accuracy).
    """
    _check_lengths(predictions, references, "vqa_accuracy")
    hits = sum(_is_correct(p, r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA v2's score of one prediction against its human answers (ten in VQA v2 and TextVQA):
    min(#matches among the other answers / 3, 1), averaged over leaving each answer out in turn
    (the 10-choose-9 subsets), after normalize_answer on both sides.

    normalize_answer drops apostrophes on both sides, so "don't" and "dont" meet as the VQA
    script's contraction table makes them meet.
    """
    if len(answers) < 2:
        raise DataError(f"vqa_soft_accuracy: needs at least 2 human answers, got {len(answers)}")
    guess = normalize_answer(prediction)
    humans = [normalize_answer(a) for a in answers]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(h == guess for i, h in enumerate(humans) if i != left_out)
        scores.append(min(matches / 3, 1.0))
    return sum(scores) / len(scores)


def accuracy_by_group(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    groups: Sequence[Hashable],
) -> dict[Hashable, tuple[float, int]]:
    """Per-group (accuracy, count), e.g. by question type, to see where a model is weak."""
    _check_lengths(predictions, references, "accuracy_by_group")
    if len(groups) != len(predictions):
        raise DataError(
            f"accuracy_by_group: {len(groups)} groups but {len(predictions)} predictions"
        )
    hits: dict[Hashable, int] = defaultdict(int)
    counts: dict[Hashable, int] = defaultdict(int)
    for p, r, g in zip(predictions, references, groups):
        counts[g] += 1
        hits[g] += _is_correct(p, r)
    return {g: (hits[g] / counts[g], counts[g]) for g in sorted(counts, key=str)}


def _caption_inputs(
    predictions: Sequence[str], references_list: Sequence[Sequence[str]], what: str
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's {id: [tokenized text]} dicts, with our tokenizer (see module docstring)."""
    _check_lengths(predictions, references_list, what)
    gts, res = {}, {}
    for i, (pred, refs) in enumerate(zip(predictions, references_list)):
        if isinstance(refs, str):
            refs = [refs]
        if len(refs) == 0:
            raise DataError(f"{what}: row {i} has no reference captions")
        gts[i] = [_normalize_words(r) for r in refs]
        res[i] = [_normalize_words(pred)]
    return gts, res


def _coco_scorer(name: str):
    if name == "bleu":
        return require("pycocoevalcap.bleu.bleu", "caption metrics").Bleu(4)
    return require("pycocoevalcap.cider.cider", "caption metrics").Cider()


def bleu4(predictions: Sequence[str], references_list: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] (COCO caption scorer); each row may have several references."""
    gts, res = _caption_inputs(predictions, references_list, "bleu4")
    score, _ = _coco_scorer("bleu").compute_score(gts, res, verbose=0)
    return float(score[3])  # the scorer returns BLEU-1..4; we report the 4-gram one


def cider(predictions: Sequence[str], references_list: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (COCO caption scorer; about 0-10, higher is better).

    Its n-gram weights come from document frequencies over the evaluated references, so it is
    only meaningful over many images: with a single image every weight is zero and so is CIDEr.
    """
    gts, res = _caption_inputs(predictions, references_list, "cider")
    if len(gts) < 2:
        raise DataError("cider: needs at least 2 images (its idf weights are 0 for one image)")
    score, _ = _coco_scorer("cider").compute_score(gts, res)
    return float(score)


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER (all word errors / all reference words) after lowercasing and removing
    punctuation, so "Hello, world." and "hello world" match. Can exceed 1 with insertions."""
    _check_lengths(predictions, references, "word_error_rate")
    jiwer = require("jiwer", "word_error_rate")
    refs = [_normalize_words(r) for r in references]
    hyps = [_normalize_words(p) for p in predictions]
    if not any(refs):
        raise DataError("word_error_rate: every reference is empty after normalization")
    return float(jiwer.wer(refs, hyps))
