"""MMMU's own answer rules: how its evaluation script reads a reply and decides it is right.

Written after lmms-eval's lmms_eval/tasks/mmmu/utils.py (parse_multi_choice_response,
parse_open_response, extract_numbers, normalize_str, eval_open, eval_multi_choice), which
follows MMMU's eval utilities. Where MMMU picks a random letter for a reply that names none,
the pick here is seeded by the question id, so a resumed run extracts the same letter.
"""
from __future__ import annotations

import random
import re

_STRIPPED = (",", ".", "!", "?", ";", ":", "'")
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])")


def multi_choice_letter(reply: str, options: dict[str, str], seed: str) -> str:
    """The option letter MMMU reads: "(B)", then "B ", then "B.", then (replies over five words)
    an option's text; the last mention wins when several are named."""
    for mark in _STRIPPED:
        reply = reply.strip(mark)
    padded = f" {reply} "
    letters = list(options)
    found = [c for c in letters if f"({c})" in padded]
    bracketed, by_text = bool(found), False
    if not found:
        found = [c for c in letters if f"{c} " in padded]
    if not found:
        found = [c for c in letters if f"{c}." in padded]
    if not found and len(padded.split()) > 5:
        found = [c for c, text in options.items() if text.lower() in padded.lower()]
        by_text = bool(found)
    if not found:
        return random.Random(seed).choice(letters)
    if len(found) == 1:
        return found[0]
    if by_text:
        positions = [padded.lower().rfind(options[c].lower()) for c in found]
    elif bracketed:
        positions = [padded.rfind(f"({c})") for c in found]
    else:
        positions = [padded.rfind(f" {c} ") for c in found]
    return found[positions.index(max(positions))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalized(text: str) -> list:
    """A number becomes its float rounded to 2 places; a text is lower-cased, and a single
    character gets a space on either side (so "a" does not match inside words)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def numbers_in(text: str) -> list[str]:
    return (_NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text)
            + _NUMBER_SIMPLE.findall(text))


def _key_answers(reply: str) -> list[str]:
    """The shortest tail after an indicator ("so ", "is ", ... and "=" in the last sentence) of
    each sentence; the whole reply when no sentence has one."""
    reply = reply.strip().strip(".").lower()
    # MMMU splits on ". " before a capital after lower-casing, so in practice on newlines only.
    sentences = re.split(r"\.\s(?=[A-Z])|\n", reply)
    keys = []
    for number, sentence in enumerate(sentences):
        indicators = _KEY_INDICATORS + (("=",) if number == len(sentences) - 1 else ())
        shortest = None
        for indicator in (i for i in indicators if i in sentence):
            tail = sentence.split(indicator)[-1].strip()
            # MMMU's order: an empty first tail is replaced by the next, a later empty one wins.
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in _STRIPPED:
            keys.append(shortest)
    return keys or [reply]


def open_answers(reply: str) -> list:
    """Every candidate answer MMMU reads in a reply to an open question: the key phrases, the
    numbers in them, each normalized (floats and lower-case texts), without repeats."""
    keys = _key_answers(reply)
    candidates = keys + [number for key in keys for number in numbers_in(key)]
    unique = []
    for candidate in candidates:
        for value in normalized(candidate):
            if value not in unique:
                unique.append(value)
    return unique


def open_correct(gold: str | list[str], candidates: list) -> bool:
    """A number is right when it equals a normalized gold number; a text when it contains a
    normalized gold text."""
    golds = [value for answer in ([gold] if isinstance(gold, str) else gold) for value in normalized(answer)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in golds):
                return True
        elif candidate in golds:
            return True
    return False
