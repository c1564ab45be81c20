"""`data.source: hf`: anything `datasets.load_dataset` opens -> Samples.

A hub id (with data.name / data.split / data.revision), a local parquet, arrow, json or jsonl
file, a folder or glob of them, a `save_to_disk` folder, or WebDataset `.tar` shards. Every kind
is read as a stream of rows with media left undecoded (bytes or paths): the processor decodes
them the way it decodes files, with the same size limits and errors, and a row that cannot be
read becomes a row error naming its shard and row. Three column layouts are understood, detected
from the column names or chosen with data.columns:

- chat (TRL / transformers): `messages` (content text with <image>/<audio> markers, or parts
  [{"type": "image"}, {"type": "text", "text": ...}]) + `images` (+ `audios`);
- llava: `conversations` ([{"from", "value"}]) + `image`;
- caption: an image column (`jpg`, `png`, `image`, ...) + a caption column (`txt`, `caption`,
  `json` with a "caption" or "text" key), as WebDataset caption shards have them.
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from omnilm.config import DataConfig
from omnilm.data.markers import mark_unmarked_images
from omnilm.data.rows import Loaded, RowCollector
from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample
from omnilm.data.sources import _role
from omnilm.errors import ConfigError, DataError
from omnilm.extras import require

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".tar": "webdataset"}
LAYOUT_COLUMNS = {
    "chat": {"messages": ("messages",), "images": ("images",), "audios": ("audios",)},
    "llava": {"conversations": ("conversations",), "image": ("image",)},
    "caption": {"image": ("image", "jpg", "jpeg", "png", "webp"), "caption": ("caption", "txt", "text", "json")},
}
REQUIRED = {"chat": ("messages",), "llava": ("conversations",), "caption": ("image", "caption")}
ROLE_NAMES = sorted({role for layout in LAYOUT_COLUMNS.values() for role in layout})


def hf(cfg: DataConfig) -> Loaded:
    """Every row of the data set, as Samples (data.streaming reads them the same way, lazily)."""
    stream = open_rows(cfg)
    convert = RowConverter(cfg, stream.column_names)
    rows = RowCollector(cfg)
    for index, row in enumerate(read_rows(stream, cfg)):
        rows.add(convert.where(row, index), lambda row=row, index=index: convert(row, index))
        if cfg.limit is not None and len(rows.out.samples) >= cfg.limit:
            break
    return rows.out


def read_rows(stream, cfg: DataConfig):
    """The rows of one pass over `stream`; a shard that breaks off (a truncated tar, a corrupt
    parquet) is a DataError naming the data set, since where the rest would be is unknown."""
    try:
        for batch in stream.iter(batch_size=1):  # iter(), unlike __iter__, never splits by DataLoader worker
            yield {key: values[0] for key, values in batch.items()}
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets, pyarrow and tarfile raise many kinds
        raise DataError(f"{cfg.path}: a shard could not be read to the end ({type(err).__name__}: {err})") from None


def open_rows(cfg: DataConfig):
    """The configured split as a datasets.IterableDataset whose media columns stay undecoded."""
    datasets = require("datasets", "data.source: hf")
    if not cfg.path:
        raise ConfigError("data.path must be set for data.source=hf (a hub id, file, folder or glob)")
    try:
        stream = _open(cfg, datasets)
    except (ConfigError, DataError):
        raise
    except Exception as err:  # noqa: BLE001 - hub, file-system and format errors all end here
        raise DataError(f"data.path {cfg.path!r}: datasets cannot open it ({type(err).__name__}: {err})") from None
    return stream.decode(False)


def _open(cfg: DataConfig, datasets):
    local = Path(cfg.path)
    if local.is_dir() and _saved_to_disk(local):
        saved = datasets.load_from_disk(str(local))
        if isinstance(saved, datasets.DatasetDict):
            if cfg.split not in saved:
                raise DataError(f"data.split {cfg.split!r} is not in {local} (it has {', '.join(saved)})")
            saved = saved[cfg.split]
        return saved.to_iterable_dataset(num_shards=min(len(saved), 64) or 1)
    files = sorted(glob.glob(cfg.path)) if glob.has_magic(cfg.path) else [cfg.path] if local.is_file() else []
    if files:
        builders = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
        if None in builders or len(builders) > 1:
            raise DataError(f"data.path {cfg.path!r}: expected files of one kind among "
                            f"{', '.join(BUILDERS)}, got {', '.join(sorted({Path(f).suffix or f for f in files}))}")
        return datasets.load_dataset(builders.pop(), data_files={cfg.split: files}, split=cfg.split, streaming=True)
    if glob.has_magic(cfg.path):
        raise DataError(f"data.path {cfg.path!r}: no file matches")
    # A data folder in the hub's layout, or a hub id (downloaded as it streams).
    return datasets.load_dataset(cfg.path, name=cfg.name, split=cfg.split, revision=cfg.revision, streaming=True)


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


class RowConverter:
    """One row (a dict of column values) -> a Sample, by the layout its columns follow (decided
    from the data set's column names, or from the first row's where a stream does not list them)."""

    def __init__(self, cfg: DataConfig, column_names: list[str] | None):
        unknown = sorted(set(cfg.columns) - set(ROLE_NAMES))
        if unknown:
            raise ConfigError(f"data.columns.{unknown[0]}: unknown role; valid roles: {', '.join(ROLE_NAMES)}")
        self.cfg = cfg
        self.base = Path(cfg.path).parent if Path(cfg.path).exists() else Path(".")
        self.layout, self.roles = self._layout(column_names) if column_names else (None, {})

    def _layout(self, columns: list[str]) -> tuple[str, dict[str, str | None]]:
        named = self.cfg.columns
        # Layouts whose required columns the recipe names come first, then chat, llava, caption.
        for layout in sorted(LAYOUT_COLUMNS, key=lambda name: not set(REQUIRED[name]) & set(named)):
            roles = {role: named.get(role) or next((c for c in names if c in columns), None)
                     for role, names in LAYOUT_COLUMNS[layout].items()}
            if all(roles[role] for role in REQUIRED[layout]):
                absent = sorted(c for c in roles.values() if c and c not in columns)
                if absent:
                    raise ConfigError(f"data.columns: no column {absent[0]!r} in {self.cfg.path} "
                                      f"(it has {', '.join(columns)})")
                return layout, roles
        raise DataError(f"{self.cfg.path}: cannot tell the column layout from its columns ({', '.join(columns)}); "
                        "expected messages (+ images, audios), conversations + image, or an image column and "
                        "a caption column; or name them with data.columns")

    def where(self, row: dict, index: int) -> str:
        """'shard sample key' for WebDataset rows, else 'path row #i'."""
        if row.get("__url__") and row.get("__key__"):
            return f"{row['__url__']} sample {row['__key__']}"
        return f"{self.cfg.path} row #{index}"

    def __call__(self, row: dict, index: int) -> Sample:
        if self.layout is None:
            self.layout, self.roles = self._layout(list(row))
        sample = {"chat": self._chat, "llava": self._llava, "caption": self._caption}[self.layout](row)
        sample.id = str(row.get("id") or row.get("__key__") or index)
        _check_markers(sample)
        return sample

    def _chat(self, row: dict) -> Sample:
        images = [self._image(x) for x in self._list(row, "images")]
        audios = [self._audio(x) for x in self._list(row, "audios")]
        messages = row[self.roles["messages"]]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{self.roles['messages']} must be a non-empty list of messages, got "
                            f"{_kind(messages)}")
        parts_media = {"image": [], "audio": []}
        out = [Message(_role(m["role"]), self._content(m["content"], parts_media)) for m in messages]
        # Media given inside the parts come in part order, before any listed in the columns.
        return Sample(messages=out, images=parts_media["image"] + images, audios=parts_media["audio"] + audios)

    def _content(self, content, parts_media: dict) -> str:
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise DataError(f"message content must be text or a list of parts, got {_kind(content)}")
        text = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text.append(part.get("text") or "")
            elif kind in ("image", "audio"):
                if part.get(kind) is not None:
                    parts_media[kind].append(self._image(part[kind]) if kind == "image" else self._audio(part[kind]))
                text.append(IMAGE_TOKEN if kind == "image" else AUDIO_TOKEN)
            else:
                shown = f"type {kind!r}" if isinstance(part, dict) else _kind(part)
                raise DataError(f"unknown content part ({shown}); use type text, image or audio")
        return "".join(text)

    def _list(self, row: dict, role: str) -> list:
        column = self.roles.get(role)
        value = row.get(column) if column else None
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def _llava(self, row: dict) -> Sample:
        turns = row[self.roles["conversations"]]
        if not isinstance(turns, list) or not turns:
            raise DataError("conversations must be a non-empty list of turns")
        messages = [Message(_role(turn["from"]), turn["value"]) for turn in turns]
        images = [self._image(x) for x in self._list(row, "image")]
        mark_unmarked_images(messages, len(images))
        return Sample(messages=messages, images=images)

    def _caption(self, row: dict) -> Sample:
        image, caption = row[self.roles["image"]], row[self.roles["caption"]]
        if isinstance(caption, dict):  # a WebDataset .json member
            caption = caption.get("caption", caption.get("text"))
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"caption must be non-empty text, got {caption!r}")
        return Sample(messages=[Message("user", IMAGE_TOKEN + self.cfg.prompt), Message("assistant", caption.strip())],
                      images=[self._image(image)])

    def _image(self, value):
        """Undecoded image -> what omnilm.data.images.load_image reads: bytes, a path or a PIL image."""
        return self._media(value, self.cfg.image_dir, "image")

    def _audio(self, value):
        """Undecoded audio -> bytes, a path, or (waveform, sampling rate) for load_audio."""
        if isinstance(value, dict) and value.get("array") is not None:
            rate = value.get("sampling_rate")
            if not isinstance(rate, int) or rate <= 0:
                raise DataError(f"an audio array needs a positive integer sampling_rate, got {rate!r}")
            return np.asarray(value["array"], dtype=np.float32), rate
        return self._media(value, self.cfg.audio_dir, "audio")

    def _media(self, value, folder: str | None, kind: str):
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, bytes) and value:
            return value
        if isinstance(value, str) and value:
            path = Path(value)
            return str(path if path.is_absolute() else Path(folder) / path if folder else self.base / path)
        if value is not None and not isinstance(value, (str, bytes)):
            return value  # a PIL image from a data set built in memory
        raise DataError(f"{kind} has neither bytes nor a path")


def _check_markers(sample: Sample) -> None:
    """Markers and media must pair up one to one; said per row here, before anything is decoded."""
    for token, items, kind in ((IMAGE_TOKEN, sample.images, "images"), (AUDIO_TOKEN, sample.audios, "audios")):
        markers = sum(m.content.count(token) for m in sample.messages if isinstance(m.content, str))
        if markers != len(items):
            raise DataError(f"{markers} {token} markers in the messages but {len(items)} {kind}")


def _kind(value) -> str:
    """What a malformed value is, without its repr (bytes, decoded images: long, or an address)."""
    return "an empty list" if isinstance(value, list) and not value else f"a {type(value).__name__}"


__all__ = ["hf", "open_rows", "read_rows", "RowConverter"]
