"""Data sources: files in public formats -> Samples. Malformed rows raise DataError naming file
and row, or are skipped and counted when `data.skip_bad` is set (omnilm.data.rows). SOURCES maps
each `data.source` name to its function; a task's own data set is one more entry there, named as
"module:function" and imported on use, so the data layer never imports a task."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable

from omnilm.config import DataConfig
from omnilm.data.markers import mark_unmarked_images
from omnilm.data.rows import Loaded, RowCollector
from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample
from omnilm.errors import ConfigError, DataError


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


def _media_dir(cfg: DataConfig, key: str, path: Path) -> Path:
    """The folder relative paths of data.image_dir / data.audio_dir resolve against (default: beside data.path)."""
    value = getattr(cfg, key)
    if value is None:
        return path.parent
    if not Path(value).is_dir():
        raise ConfigError(f"data.{key}: no such folder: {value}")
    return Path(value)


PROBED_MEDIA = 8  # a folder holding none of the first few files is the wrong folder, not a few bad rows


def _media_found(loaded: Loaded, cfg: DataConfig, path: Path) -> Loaded:
    """Refuse a media folder that holds none of the data's first files, naming the setting, instead
    of training until the first image is read and failing on its path."""
    for key, kind in (("image_dir", "images"), ("audio_dir", "audios")):
        if kind == "images" and cfg.feature_cache is not None:
            continue  # the images' features are read from the cache instead
        folder = _media_dir(cfg, key, path)
        first = [Path(item) for sample in loaded.samples for item in getattr(sample, kind)
                 if Path(item).is_relative_to(folder)][:PROBED_MEDIA]
        if first and not any(item.exists() for item in first):
            where = (f"data.{key} ({folder})" if getattr(cfg, key) is not None
                     else f"{folder}, the folder of data.path (data.{key} is not set)")
            raise ConfigError(f"{kind[:-1]} {first[0].relative_to(folder)} is not in {where}; "
                              f"set data.{key} to the folder that holds the {kind}")
    return loaded


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
    image_dir = _media_dir(cfg, "image_dir", path)
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
    return _media_found(rows.out, cfg, path)


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
    """LLaVA-Instruct JSON: [{"id", "image"?, "conversations": [{"from", "value"}, ...]}]; "image" is
    one path or a list of them, matched in order with the <image> markers."""
    path = _require_file(cfg.path, "data.path")
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of conversations")
    image_dir = _media_dir(cfg, "image_dir", path)
    rows = RowCollector(cfg)
    for i, row in enumerate(data):
        def make(row=row, i=i):
            messages = [Message(_role(turn["from"]), turn["value"]) for turn in row["conversations"]]
            if not messages or not all(isinstance(m.content, str) for m in messages):
                raise DataError("conversations must be a non-empty list of text turns")
            listed = row.get("image") or []  # one path, or a list of them (multi-image rows)
            images = [_resolve(image_dir, x) for x in (listed if isinstance(listed, list) else [listed])]
            mark_unmarked_images(messages, len(images))
            return Sample(messages=messages, images=images, id=str(row.get("id", i)))

        rows.add(f"{path} row #{i}", make)
    return _media_found(rows.out, cfg, path)


def jsonl_messages(cfg: DataConfig) -> Loaded:
    """One JSON object a line with OpenAI-style `messages`; content is text or a list of parts:
    {"type": "text", "text"}, {"type": "image", "image": path}, {"type": "audio", "audio": path}.
    Media may also be listed in top-level "images"/"audios" with markers in the text."""
    path = _require_file(cfg.path, "data.path")
    image_dir, audio_dir = _media_dir(cfg, "image_dir", path), _media_dir(cfg, "audio_dir", path)
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
    return _media_found(rows.out, cfg, path)


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
    audio_dir = _media_dir(cfg, "audio_dir", path)
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
    return _media_found(rows.out, cfg, path)


def hf_datasets(cfg: DataConfig) -> Loaded:
    """Anything `datasets.load_dataset` opens (omnilm.data.hf_source); datasets loads only when used."""
    from omnilm.data.hf_source import hf

    return hf(cfg)


SOURCES: dict[str, Callable[[DataConfig], Loaded] | str] = {
    "coco": coco_captions,
    "llava": llava_instruct,
    "jsonl": jsonl_messages,
    "asr": asr_manifest,
    "hf": hf_datasets,
    "easyvqa": "omnilm.tasks.easyvqa.source:easyvqa",  # the quickstart's data set (omnilm/tasks/easyvqa)
}


def read_source(cfg: DataConfig) -> Loaded:
    """The rows of the configured source, as they are (possibly none good)."""
    return source_function(cfg.source)(cfg)


def source_function(name: str) -> Callable[[DataConfig], Loaded]:
    """The function of `data.source` `name`; a "module:function" entry is imported now."""
    if name not in SOURCES:
        raise ConfigError(f"unknown data.source {name!r}; choose one of {', '.join(SOURCES)}")
    entry = SOURCES[name]
    if isinstance(entry, str):
        module, function = entry.split(":")
        return getattr(importlib.import_module(module), function)
    return entry


def load_samples(cfg: DataConfig) -> Loaded:
    loaded = read_source(cfg)
    if not loaded.samples:
        raise DataError(f"data source {cfg.source!r} ({cfg.path}) produced no samples")
    return loaded
