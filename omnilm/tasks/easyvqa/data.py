"""easy-VQA: synthetic 64x64 shape images with simple questions, shipped on PyPI.

The `easy-vqa==1.0` wheel (MIT, Victor Zhou) holds 4,000 train / 1,000 test PNGs, 38,575 /
9,673 questions and 13 answers, so it is a real VQA task that needs no network. We read its
files directly rather than through its helper functions so that a bad row can be reported by
file and index. Here: the items, what each image shows, the prompt layouts, one item as a Sample.
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample
from omnilm.errors import DataError, MissingDependency

INSTALL = "pip install --no-deps easy-vqa==1.0"
SPLITS = ("train", "test")

# The three question kinds, told apart by their answer; together they cover answers.txt.
YES_NO_ANSWERS = frozenset({"yes", "no"})
COLOR_ANSWERS = frozenset({"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"})
SHAPE_ANSWERS = frozenset({"circle", "rectangle", "triangle"})
NEGATIONS = frozenset({"not", "no"})  # "is there not a circle?", "is no red shape present?"
QUESTION_TYPES = {"yes/no": YES_NO_ANSWERS, "color": COLOR_ANSWERS, "shape": SHAPE_ANSWERS}

# The layouts `omnilm chat`, the web app and the API build from an image and a question (the API
# keeps its parts in the order sent): "<image>\nis there a red shape?" or "is there a red
# shape?\n<image>" -> " yes". No "Question:"/"Answer:" wrapping: its 5 tokens a sample made each
# training step ~25 % longer.
TEXT_TEMPLATE = IMAGE_TOKEN + "\n{question}"
# With a spoken question the audio takes the question's place; no transcript is given.
SPOKEN_TEMPLATE = IMAGE_TOKEN + "\n" + AUDIO_TOKEN
# layout name -> (typed template, spoken template)
LAYOUTS = {"image-first": (TEXT_TEMPLATE, SPOKEN_TEMPLATE),
           "question-first": ("{question}\n" + IMAGE_TOKEN, AUDIO_TOKEN + "\n" + IMAGE_TOKEN)}
MIXED = "mixed"  # each question one of LAYOUTS at random


@dataclass(frozen=True)
class EasyVQAItem:
    id: str  # "<split>-<question index>", stable across runs
    image: Path
    question: str
    answer: str
    qtype: str  # "yes/no" | "color" | "shape"
    image_id: int


def question_type(answer: str) -> str:
    for qtype, answers in QUESTION_TYPES.items():
        if answer in answers:
            return qtype
    raise DataError(f"easy-VQA answer {answer!r} is not a yes/no, colour or shape answer")


def data_dir() -> Path:
    """The data folder inside the installed easy_vqa package."""
    # find_spec instead of import: we only need the files, and the error can say how to install.
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"easy-VQA data is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise MissingDependency(f"easy_vqa is installed but {path} is missing: {INSTALL}")
    return path


def answers() -> list[str]:
    """The 13 answers, in the package's order."""
    path = data_dir() / "answers.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_easyvqa(split: str) -> list[EasyVQAItem]:
    """All questions of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"easy-VQA split must be one of {SPLITS}, got {split!r}")
    root = data_dir() / split
    questions_file = root / "questions.json"
    try:
        rows = json.loads(questions_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {questions_file}: {e}") from e
    images = {p.name for p in (root / "images").glob("*.png")}
    items = []
    for i, row in enumerate(rows):
        # Each row is [question, answer, image_id].
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[2], int)):
            raise DataError(
                f"{questions_file} row {i}: expected [question, answer, image_id], got {row!r}"
            )
        question, answer, image_id = row
        if f"{image_id}.png" not in images:
            missing = root / "images" / f"{image_id}.png"
            raise DataError(f"{questions_file} row {i}: image {missing} is missing")
        try:
            qtype = question_type(answer)
        except DataError as e:
            raise DataError(f"{questions_file} row {i}: {e}") from e
        items.append(
            EasyVQAItem(
                id=f"{split}-{i}",
                image=root / "images" / f"{image_id}.png",
                question=question,
                answer=answer,
                qtype=qtype,
                image_id=image_id,
            )
        )
    return items


def named_words(question: str) -> dict[str, str | None]:
    """The colour and the shape a question names: "what is the red shape?" -> {"color": "red", "shape": None}."""
    words = set(re.findall(r"\w+", question))
    return {kind: next(iter(words & answers), None) for kind, answers in (("color", COLOR_ANSWERS),
                                                                         ("shape", SHAPE_ANSWERS))}


def image_descriptions(items: list[EasyVQAItem]) -> dict[Path, str]:
    """Image -> "red circle", pieced together from the answers to its questions (easy-VQA has
    no captions; each image holds one shape of one colour). Images whose questions do not
    reveal both are left out."""
    facts: dict[Path, dict[str, str]] = {}
    for it in items:
        found = facts.setdefault(it.image, {})
        words = set(re.findall(r"\w+", it.question))
        named = named_words(it.question)
        if it.qtype != "yes/no":
            found[it.qtype] = it.answer  # "what color is the circle?" -> "red": also names the shape
            other = "shape" if it.qtype == "color" else "color"
            if named[other]:
                found[other] = named[other]
        elif (it.answer == "yes") != bool(words & NEGATIONS):  # the question states a fact
            found.update({kind: word for kind, word in named.items() if word})
    return {image: f"{f['color']} {f['shape']}" for image, f in facts.items() if len(f) == 2}


def balance_yes_no(items: list[EasyVQAItem], seed: int = 0) -> list[EasyVQAItem]:
    """Each yes/no question string keeps as many "yes" as "no" answers (the surplus of the more
    common one dropped at random); other questions are kept. Original order."""
    by_answer: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        if it.qtype == "yes/no":
            by_answer.setdefault((it.question, it.answer), []).append(i)
    rng, dropped = random.Random(seed), set()
    for (question, answer), indices in by_answer.items():
        keep = min(len(indices), len(by_answer.get((question, "no" if answer == "yes" else "yes"), [])))
        dropped.update(rng.sample(indices, len(indices) - keep))
    return [it for i, it in enumerate(items) if i not in dropped]


def sample_items(items: list[EasyVQAItem], sample: int | None, seed: int) -> list[EasyVQAItem]:
    """A fixed random subset of `sample` items (all of them if None or too many), original order."""
    if sample is None or sample >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), sample))
    return [items[i] for i in chosen]


def choose_layouts(layout: str, n: int, seed: int) -> list[str]:
    """The layout of each of n questions: `layout` for all, or with MIXED one of LAYOUTS each at random."""
    if layout != MIXED:
        return [layout] * n
    rng = random.Random(seed)
    return [rng.choice(list(LAYOUTS)) for _ in range(n)]


def asked_word(question: str) -> str | None:
    """The colour or shape a yes/no question asks about: "is there not a red shape?" -> "red"."""
    named = named_words(question)
    return named["color"] or named["shape"]


def checked_answer(item: EasyVQAItem, description: str) -> str:
    """The reply's last two lines for a yes/no question: whether the image shows the asked word,
    then the answer ("red: no\nyes" for "is there not a red shape?" about a blue rectangle).
    Other questions keep the bare answer."""
    word = asked_word(item.question)
    if item.qtype != "yes/no" or word is None:
        return item.answer
    shown = "yes" if word in description.split() else "no"
    return f"{word}: {shown}\n{item.answer}"


def to_sample(
    item: EasyVQAItem, *, spoken_audio: str | Path | None = None, template: str | None = None,
    description: str | None = None, layout: str = "image-first", check: bool = False,
) -> Sample:
    """One user turn (image + typed or spoken question) and one assistant turn (the answer).

    The answer is the bare word; a tokenizer that needs a leading space (" yes") gets it from
    the chat renderer, not from the data. With a `description` the reply first states what the
    image shows, then answers on the next line ("blue rectangle\nno"); with `check` too, a
    yes/no reply first says whether the image shows the asked word ("blue rectangle\nred:
    no\nno"). `layout` (see LAYOUTS)
    puts the image before or after the question when no `template` is given.
    """
    spoken = spoken_audio is not None
    if template is None:
        template = LAYOUTS[layout][spoken]
    _check_template(template, spoken)
    user = template.replace("{question}", item.question)
    return Sample(
        messages=[Message("user", user),
                  Message("assistant", _reply(item, description, check))],
        images=[item.image],
        audios=[Path(spoken_audio)] if spoken else [],
        id=item.id,
        meta={"qtype": item.qtype, "question": item.question, "answer": item.answer},
    )


def _reply(item: EasyVQAItem, description: str | None, check: bool) -> str:
    if description is None:
        return item.answer
    return f"{description}\n{checked_answer(item, description) if check else item.answer}"


def _check_template(template: str, spoken: bool) -> None:
    if template.count(IMAGE_TOKEN) != 1:
        raise ValueError(f"easy-VQA template needs exactly one {IMAGE_TOKEN}: {template!r}")
    n_audio = template.count(AUDIO_TOKEN)
    if spoken and n_audio != 1:
        raise ValueError(
            f"a spoken-question template needs exactly one {AUDIO_TOKEN}: {template!r}"
        )
    if not spoken and "{question}" not in template:
        raise ValueError(f"a typed-question template needs {{question}}: {template!r}")
    if not spoken and n_audio:
        raise ValueError(f"template has {AUDIO_TOKEN} but no spoken_audio was given: {template!r}")

