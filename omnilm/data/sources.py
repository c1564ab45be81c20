"""Data sources: files in public formats -> Samples. Malformed rows raise DataError naming file
and row, or are skipped and counted when `data.skip_bad` is set."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omnilm.config import DataConfig
from omnilm.data.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample, check_messages
from omnilm.errors import ConfigError, DataError


LOGGED_SKIPS = 20  # skipped rows named one by one in the training log; the rest are counted


@dataclass
class Loaded:
    samples: list[Sample] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # every skipped row: "file row: reason"

    @property
    def skipped(self) -> int:
        return len(self.bad)

    @property
    def errors(self) -> list[str]:
        """The first skipped rows, for the log (`omnilm data check` lists them all)."""
        return self.bad[:LOGGED_SKIPS]


class RowCollector:
    """Turns each row into a Sample; a bad row stops the run or is skipped and counted."""

    def __init__(self, cfg: DataConfig):
        self.cfg, self.out = cfg, Loaded()

    def add(self, where: str, make):
        if self.cfg.limit is not None and len(self.out.samples) >= self.cfg.limit:
            return
        try:
            sample = make()
            check_messages(sample.messages)
            self.out.samples.append(sample)
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as err:
            message = f"{where}: {err if isinstance(err, DataError) else _describe(err)}"
            if not self.cfg.skip_bad:
                raise DataError(message + " (set data.skip_bad=true to skip such rows)") from None
            self.out.bad.append(message)


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    return f"malformed row ({type(err).__name__}: {err})"


def _require_file(cfg_value: str | None, key: str) -> Path:
    if not cfg_value:
        raise ConfigError(f"{key} must be set for this data source")
    path = Path(cfg_value)
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}")
    return path


def _read_json(path: Path):
    raw = path.read_bytes()
    try:
        return json.loads(raw)  # bytes: json detects UTF-8/16/32 and a BOM itself
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: {_not_utf8(raw, err)}; save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _iter_jsonl(path: Path):
    """(line number, parsed row or the DataError that row is): one bad line is one bad row."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            yield number, DataError(_not_utf8(raw, err))
            continue
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, DataError(f"not valid JSON ({err})")


def _not_utf8(raw: bytes, err: UnicodeDecodeError) -> str:
    line = raw.count(b"\n", 0, err.start) + 1
    where = f"offset {err.start}" + (f" (line {line})" if b"\n" in raw else "")
    return f"not UTF-8 text: byte 0x{raw[err.start]:02x} at byte {where}"


def _resolve(base: Path, value) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"media path must be a non-empty string, got {value!r}")
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def coco_captions(cfg: DataConfig) -> Loaded:
    """COCO captions JSON (`annotations/captions_train2017.json`) + image folder (`train2017/`)."""
    path = _require_file(cfg.path, "data.path")
    data = _read_json(path)
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise DataError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        raise DataError(f"{path}: 'images' and 'annotations' must be lists")
    image_dir = Path(cfg.image_dir or path.parent)
    files = _coco_files(data["images"])
    rows = RowCollector(cfg)
    for i, ann in enumerate(data["annotations"]):
        def make(ann=ann, i=i):
            caption, image_id = ann["caption"], ann["image_id"]
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"caption must be non-empty text, got {caption!r}")
            if not isinstance(image_id, (int, str)) or image_id not in files:
                raise DataError(f"image_id {image_id!r} is not listed under 'images'")
            if files[image_id] is None:
                raise DataError(f"the 'images' entry with id {image_id!r} has no 'file_name'")
            return Sample(
                messages=[Message("user", IMAGE_TOKEN + cfg.prompt), Message("assistant", caption.strip())],
                images=[_resolve(image_dir, files[image_id])],
                id=str(ann.get("id", i)),
            )

        rows.add(f"{path} annotation #{i}", make)
    return rows.out


def _coco_files(images: list) -> dict:
    """image id -> file name, or None where the entry has no usable 'file_name' (its captions
    then fail one by one, naming the image, instead of the whole file failing)."""
    files = {}
    for img in images:
        if isinstance(img, dict) and isinstance(img.get("id"), (int, str)):
            name = img.get("file_name")
            files[img["id"]] = name if isinstance(name, str) and name else None
    return files


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _role(name) -> str:
    if not isinstance(name, str) or name not in ROLES:
        raise DataError(f"unknown role {name!r} (use one of {', '.join(ROLES)})")
    return ROLES[name]


def llava_instruct(cfg: DataConfig) -> Loaded:
    """LLaVA-Instruct JSON: [{"id", "image"?, "conversations": [{"from", "value"}, ...]}]."""
    path = _require_file(cfg.path, "data.path")
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of conversations")
    image_dir = Path(cfg.image_dir or path.parent)
    rows = RowCollector(cfg)
    for i, row in enumerate(data):
        def make(row=row, i=i):
            messages = [Message(_role(turn["from"]), turn["value"]) for turn in row["conversations"]]
            if not messages or not all(isinstance(m.content, str) for m in messages):
                raise DataError("conversations must be a non-empty list of text turns")
            images = [_resolve(image_dir, row["image"])] if row.get("image") else []
            markers = sum(m.content.count(IMAGE_TOKEN) for m in messages)
            if images and markers == 0:  # some rows omit the marker: the image goes first
                first = next((m for m in messages if m.role == "user"), None)
                if first is None:
                    raise DataError("the row has an image but no user turn to attach it to")
                first.content = IMAGE_TOKEN + "\n" + first.content
            return Sample(messages=messages, images=images, id=str(row.get("id", i)))

        rows.add(f"{path} row #{i}", make)
    return rows.out


def jsonl_messages(cfg: DataConfig) -> Loaded:
    """One JSON object a line with OpenAI-style `messages`; content is text or a list of parts:
    {"type": "text", "text"}, {"type": "image", "image": path}, {"type": "audio", "audio": path}.
    Media may also be listed in top-level "images"/"audios" with markers in the text."""
    path = _require_file(cfg.path, "data.path")
    image_dir, audio_dir = Path(cfg.image_dir or path.parent), Path(cfg.audio_dir or path.parent)
    rows = RowCollector(cfg)
    for number, row in _iter_jsonl(path):
        def make(row=row, number=number):
            if isinstance(row, DataError):
                raise row
            images = [_resolve(image_dir, p) for p in row.get("images", [])]
            audios = [_resolve(audio_dir, p) for p in row.get("audios", [])]
            messages = []
            for msg in row["messages"]:
                content = msg["content"]
                if isinstance(content, list):
                    content = "".join(_part(p, image_dir, audio_dir, images, audios) for p in content)
                if not isinstance(content, str):
                    raise DataError(f"message content must be text or a list of parts, got {content!r}")
                messages.append(Message(_role(msg["role"]), content))
            return Sample(messages=messages, images=images, audios=audios, id=str(row.get("id", number)))

        rows.add(f"{path} line {number}", make)
    return rows.out


def _part(part: dict, image_dir: Path, audio_dir: Path, images: list, audios: list) -> str:
    kind = part["type"]
    if kind == "text":
        return part["text"]
    if kind in ("image", "image_url"):
        images.append(_resolve(image_dir, part["image"] if kind == "image" else part["image_url"]["url"]))
        return IMAGE_TOKEN
    if kind == "audio":
        audios.append(_resolve(audio_dir, part["audio"]))
        return AUDIO_TOKEN
    raise DataError(f"unknown content part type {kind!r} (use text, image or audio)")


def asr_manifest(cfg: DataConfig) -> Loaded:
    """ASR manifest JSONL: {"audio": path, "text": transcript} (LibriSpeech/Common Voice style)."""
    path = _require_file(cfg.path, "data.path")
    audio_dir = Path(cfg.audio_dir or path.parent)
    prompt = cfg.prompt or "\nTranscribe:"
    rows = RowCollector(cfg)
    for number, row in _iter_jsonl(path):
        def make(row=row, number=number):
            if isinstance(row, DataError):
                raise row
            text = row["text"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text must be a non-empty transcript, got {text!r}")
            return Sample(
                messages=[Message("user", AUDIO_TOKEN + prompt), Message("assistant", text.strip())],
                audios=[_resolve(audio_dir, row["audio"])],
                id=str(row.get("id", number)),
            )

        rows.add(f"{path} line {number}", make)
    return rows.out


EASYVQA_OPTIONS = {"split", "sample", "seed", "task", "spoken", "speech_dir", "image", "balance", "describe_first",
                   "layout"}
# The alignment task: the model writes out the spoken question (no image): "<audio>" -> " is
# there a red shape?". Bare, since every prompt token costs training time and says nothing here.
TRANSCRIBE_TEMPLATE = AUDIO_TOKEN
# The describing task, a caption task: each image once, then its colour and shape
# ("<image>" -> " blue rectangle"), with no words around it, as the seed's stage 1 had none.
DESCRIBE_TEMPLATE = IMAGE_TOKEN
EASYVQA_TASKS = ("vqa", "transcribe", "describe")


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
    layout (image-first: "<image>\nquestion" | question-first: "question\n<image>" | mixed: each
    question one of the two at random, seeded by `seed`)."""
    from omnilm.data import easyvqa as ev

    opts = dict(cfg.options)
    unknown = sorted(set(opts) - EASYVQA_OPTIONS)
    if unknown:
        raise ConfigError(f"data.options.{unknown[0]}: unknown easy-VQA option; valid: {', '.join(sorted(EASYVQA_OPTIONS))}")
    task, use_image = opts.get("task", "vqa"), opts.get("image", True)
    if task not in EASYVQA_TASKS:
        raise ConfigError(f"data.options.task: {task!r} is not one of {', '.join(EASYVQA_TASKS)}")
    layout = opts.get("layout", "image-first")
    if layout not in (*ev.LAYOUTS, "mixed"):
        raise ConfigError(f"data.options.layout: {layout!r} is not one of {', '.join(ev.LAYOUTS)}, mixed")
    items = ev.load_easyvqa(opts.get("split", "train"))
    described = ev.image_descriptions(items) if opts.get("describe_first") else {}  # from the whole split
    if described:
        items = [it for it in items if it.image in described]
    if opts.get("balance"):
        items = ev.balance_yes_no(items, opts.get("seed", 0))
    items = _easyvqa_subset(items, opts.get("sample"), opts.get("seed", 0))
    if task == "describe":
        rows = RowCollector(cfg)
        for image, words in ev.image_descriptions(items).items():
            rows.add(f"easy-VQA image {image.name}",
                     lambda image=image, words=words: Sample([Message("user", DESCRIBE_TEMPLATE),
                                                              Message("assistant", words)], images=[image]))
        return rows.out
    audios = _easyvqa_speech(items, opts) if opts.get("spoken") else [None] * len(items)
    if task == "transcribe" and audios[0] is None:
        raise ConfigError("data.options.task=transcribe needs data.options.spoken (a voice)")
    layouts = _easyvqa_layouts(layout, len(items), opts.get("seed", 0))
    rows = RowCollector(cfg)
    for item, audio, item_layout in zip(items, audios, layouts):
        def make(item=item, audio=audio, item_layout=item_layout):
            if task == "transcribe":
                return Sample([Message("user", TRANSCRIBE_TEMPLATE), Message("assistant", item.question)],
                              audios=[audio], id=item.id, meta={"qtype": item.qtype, "question": item.question})
            sample = ev.to_sample(item, spoken_audio=audio, description=described.get(item.image), layout=item_layout)
            if not use_image:  # blind: same prompt without the image marker's line
                lines = sample.messages[0].content.split("\n")
                sample.messages[0].content = "\n".join(line for line in lines if line != IMAGE_TOKEN)
                sample.images = []
            return sample

        rows.add(f"easy-VQA {item.id}", make)
    return rows.out


def _easyvqa_subset(items: list, sample: int | None, seed: int) -> list:
    if sample is None or sample >= len(items):
        return items
    import random

    chosen = sorted(random.Random(seed).sample(range(len(items)), sample))
    return [items[i] for i in chosen]


def _easyvqa_layouts(layout: str, n: int, seed: int) -> list[str]:
    if layout != "mixed":
        return [layout] * n
    import random

    from omnilm.data.easyvqa import LAYOUTS

    rng = random.Random(seed)
    return [rng.choice(list(LAYOUTS)) for _ in range(n)]


def _easyvqa_speech(items: list, opts: dict) -> list:
    """One cached espeak-ng clip per question; with several voices, question i uses voice i mod n."""
    from omnilm.data.speech import synthesize
    from omnilm.zoo.cache import cache_dir

    voices = opts["spoken"] if isinstance(opts["spoken"], list) else [opts["spoken"]]
    folder = Path(opts.get("speech_dir") or cache_dir() / "easyvqa-speech")
    by_voice: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        by_voice.setdefault(voices[i % len(voices)], []).append(item.question)
    paths = {}
    for voice, questions in by_voice.items():
        unique = list(dict.fromkeys(questions))  # 107 distinct questions in all of easy-VQA
        paths.update({(voice, q): p for q, p in zip(unique, synthesize(unique, voice, folder, progress=False))})
    return [str(paths[(voices[i % len(voices)], item.question)]) for i, item in enumerate(items)]


SOURCES = {
    "coco": coco_captions,
    "llava": llava_instruct,
    "jsonl": jsonl_messages,
    "asr": asr_manifest,
    "easyvqa": easyvqa,
}


def read_source(cfg: DataConfig) -> Loaded:
    """The rows of the configured source, as they are (possibly none good)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[cfg.source](cfg)


def load_samples(cfg: DataConfig) -> Loaded:
    loaded = read_source(cfg)
    if not loaded.samples:
        raise DataError(f"data source {cfg.source!r} ({cfg.path}) produced no samples")
    return loaded
