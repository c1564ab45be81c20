"""The `easyvqa` data source (`data.source: easyvqa`): easy-VQA questions as Samples, through the
same interface as every source (omnilm.data.rows), registered in omnilm.data.sources.SOURCES."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from omnilm.config import DataConfig
from omnilm.data.rows import Loaded, RowCollector
from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample
from omnilm.data.speech import synthesize
from omnilm.errors import ConfigError
from omnilm.tasks.easyvqa.data import (LAYOUTS, MIXED, EasyVQAItem, balance_yes_no, choose_layouts,
                                       image_descriptions, load_easyvqa, sample_items, to_sample)
from omnilm.zoo.cache import cache_dir

OPTIONS = {"split", "sample", "seed", "task", "spoken", "speech_dir", "image", "balance", "describe_first", "check", "layout"}
# The alignment task: the model writes out the spoken question (no image): "<audio>" -> " is
# there a red shape?". Bare, since every prompt token costs training time and says nothing here.
TRANSCRIBE_TEMPLATE = AUDIO_TOKEN
# The describing task, a caption task: each image once, then its colour and shape
# ("<image>" -> " blue rectangle"), with no words around it, as the seed's stage 1 had none.
DESCRIBE_TEMPLATE = IMAGE_TOKEN
TASKS = ("vqa", "transcribe", "describe")


def default_speech_dir() -> Path:
    """Where the spoken questions are cached unless data.options.speech_dir says otherwise."""
    return cache_dir() / "easyvqa-speech"


def easyvqa(cfg: DataConfig) -> Loaded:
    """The easy-VQA package's questions (no data.path needed). data.options:
    split (train | test), sample (a fixed random subset of N questions, seeded by `seed`),
    task (vqa | transcribe: write out the spoken question | describe: each image's colour and
    shape, gathered from the answers to its questions), spoken (an espeak-ng voice, or a
    list of voices used in turn, to ask the question aloud), speech_dir (where the spoken
    clips are cached), image (false = the question alone, for a blind baseline), balance (true =
    as many "yes" as "no" answers for each yes/no question, the surplus dropped at random: in
    easy-VQA the answer skew alone lets a model that never looks score ~85 % on them),
    describe_first (true = each reply first states the image's colour and shape, then answers on
    the next line: "blue rectangle\nno"; images whose description is unknown are left out),
    check (with describe_first: a yes/no reply says whether the image shows the asked colour or
    shape before it answers: "blue rectangle\nred: no\nno"),
    layout (image-first: "<image>\nquestion" | question-first: "question\n<image>" | mixed: each
    question one of the two at random, seeded by `seed`)."""
    opts = dict(cfg.options)
    task, layout = _checked(opts)
    seed = opts.get("seed", 0)
    items = load_easyvqa(opts.get("split", "train"))
    described = image_descriptions(items) if opts.get("describe_first") else {}  # from the whole split
    if described:
        items = [it for it in items if it.image in described]
    if opts.get("balance"):
        items = balance_yes_no(items, seed)
    items = sample_items(items, opts.get("sample"), seed)
    if task == "describe":
        return _descriptions(cfg, items)
    audios = _speech(items, opts) if opts.get("spoken") else [None] * len(items)
    if task == "transcribe" and audios[0] is None:
        raise ConfigError("data.options.task=transcribe needs data.options.spoken (a voice)")
    use_image = opts.get("image", True)
    rows = RowCollector(cfg)
    for item, audio, item_layout in zip(items, audios, choose_layouts(layout, len(items), seed)):
        make = (partial(_transcription, item, audio) if task == "transcribe" else
                partial(_question, item, audio, described.get(item.image), item_layout, use_image,
                        bool(opts.get("check"))))
        rows.add(f"easy-VQA {item.id}", make)
    return rows.out


def _checked(opts: dict) -> tuple[str, str]:
    """(task, layout), each option name and value checked."""
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise ConfigError(f"data.options.{unknown[0]}: unknown easy-VQA option; valid: {', '.join(sorted(OPTIONS))}")
    task = opts.get("task", "vqa")
    if task not in TASKS:
        raise ConfigError(f"data.options.task: {task!r} is not one of {', '.join(TASKS)}")
    if opts.get("check") and not opts.get("describe_first"):
        raise ConfigError("data.options.check: needs describe_first: true (the check follows the description)")
    layout = opts.get("layout", "image-first")
    if layout not in (*LAYOUTS, MIXED):
        raise ConfigError(f"data.options.layout: {layout!r} is not one of {', '.join(LAYOUTS)}, {MIXED}")
    return task, layout


def _descriptions(cfg: DataConfig, items: list[EasyVQAItem]) -> Loaded:
    """Each image once: "<image>" -> "blue rectangle"."""
    rows = RowCollector(cfg)
    for image, words in image_descriptions(items).items():
        rows.add(f"easy-VQA image {image.name}", partial(_description, image, words))
    return rows.out


def _description(image: Path, words: str) -> Sample:
    return Sample([Message("user", DESCRIBE_TEMPLATE), Message("assistant", words)], images=[image])


def _transcription(item: EasyVQAItem, audio: str) -> Sample:
    return Sample([Message("user", TRANSCRIBE_TEMPLATE), Message("assistant", item.question)],
                  audios=[audio], id=item.id, meta={"qtype": item.qtype, "question": item.question})


def _question(item: EasyVQAItem, audio: str | None, description: str | None, layout: str, image: bool,
              check: bool) -> Sample:
    sample = to_sample(item, spoken_audio=audio, description=description, layout=layout, check=check)
    if not image:  # blind: same prompt without the image marker's line
        lines = sample.messages[0].content.split("\n")
        sample.messages[0].content = "\n".join(line for line in lines if line != IMAGE_TOKEN)
        sample.images = []
    return sample


def _speech(items: list[EasyVQAItem], opts: dict) -> list[str]:
    """One cached espeak-ng clip per question; with several voices, question i uses voice i mod n."""
    voices = opts["spoken"] if isinstance(opts["spoken"], list) else [opts["spoken"]]
    folder = Path(opts.get("speech_dir") or default_speech_dir())
    by_voice: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        by_voice.setdefault(voices[i % len(voices)], []).append(item.question)
    paths = {}
    for voice, questions in by_voice.items():
        unique = list(dict.fromkeys(questions))  # 107 distinct questions in all of easy-VQA
        paths.update({(voice, q): p for q, p in zip(unique, synthesize(unique, voice, folder, progress=False))})
    return [str(paths[(voices[i % len(voices)], item.question)]) for i, item in enumerate(items)]
