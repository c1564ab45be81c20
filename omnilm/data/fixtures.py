"""Small data sets in the exact public formats (COCO captions, LLaVA-Instruct, ASR manifest,
a Hugging Face parquet in TRL's chat layout and WebDataset caption shards), generated on the spot: shapes of known colour, so a tiny model has something real to learn."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from omnilm.files import atomic_folder

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 210, 40)}
SHAPES = ("square", "circle", "triangle")


def draw_shape(color: str, shape: str, size: int = 64, seed: int = 0,
               radius: tuple[int, int] | None = None) -> Image.Image:
    """One shape on a `size` px canvas; its half-width is drawn from `radius` (default: a fifth
    to a third of the canvas)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    r = rng.randint(*radius) if radius else rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    elif shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
    return img


def _images(folder: Path, count: int, seed: int) -> list[tuple[str, str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        name = f"{i:012d}.jpg"
        draw_shape(color, shape, seed=seed * 1000 + i).save(folder / name, quality=95)
        out.append((name, color, shape))
    return out


def make_coco(root, count: int = 48, seed: int = 0) -> Path:
    """root/train2017/*.jpg + root/annotations/captions_train2017.json; returns the JSON path."""
    root = Path(root)
    images = _images(root / "train2017", count, seed)
    anns, entries = [], []
    for i, (name, color, shape) in enumerate(images):
        entries.append({"id": i + 1, "file_name": name, "width": 64, "height": 64})
        for j, text in enumerate((f"a {color} {shape}.", f"a picture of a {color} {shape}.")):
            anns.append({"id": 2 * i + j + 1, "image_id": i + 1, "caption": text})
    path = root / "annotations" / "captions_train2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {"description": "omnilm fixture"}, "images": entries, "annotations": anns}))
    return path


def make_llava(root, count: int = 48, seed: int = 1) -> Path:
    """root/images/*.jpg + root/llava_instruct.json (multi-turn, LLaVA-Instruct-150K format)."""
    root = Path(root)
    images = _images(root / "images", count, seed)
    rows = []
    for i, (name, color, shape) in enumerate(images):
        rows.append({"id": f"{i:06d}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": f"It is {color}."},
            {"from": "human", "value": "And what shape is it?"},
            {"from": "gpt", "value": f"It is a {shape}."},
        ]})
    rows.append({"id": "text-only", "conversations": [
        {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]})
    path = root / "llava_instruct.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


def make_asr(root, count: int = 16, seed: int = 2) -> Path:
    """root/*.wav spoken with espeak-ng + root/manifest.jsonl ({"audio", "text"} per line)."""
    from omnilm.data.speech import TRAIN_VOICE, synthesize

    rng = random.Random(seed)
    texts = [f"a {rng.choice(list(COLORS))} {rng.choice(SHAPES)}" for _ in range(count)]
    root = Path(root)
    wavs = synthesize(texts, TRAIN_VOICE, root, progress=False)
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps({"audio": w.name, "text": t}) + "\n" for w, t in zip(wavs, texts)))
    return path


def caption_rows(count: int, seed: int) -> list[tuple[bytes, str]]:
    """(JPEG bytes, caption) pairs: the same bytes go into every format, so all decode alike."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        buffer = io.BytesIO()
        draw_shape(color, shape, seed=seed * 1000 + i).save(buffer, format="JPEG", quality=95)
        rows.append((buffer.getvalue(), f"a {color} {shape}."))
    return rows


def trl_dataset(rows: list[tuple[bytes, str]]):
    """A datasets.Dataset in TRL's vision layout: `messages` with content parts + `images`."""
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    features = Features({"messages": List({"role": Value("string"), "content": List(part)}),
                         "images": List(ImageFeature())})
    return Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "image", "text": None}]},
                      {"role": "assistant", "content": [{"type": "text", "text": caption}]}] for _, caption in rows],
        "images": [[{"bytes": jpeg, "path": None}] for jpeg, _ in rows],
    }, features=features)


def write_shards(rows: list[tuple[bytes, str]], folder: Path, shards: int) -> list[Path]:
    """WebDataset tar shards: KEY.jpg + KEY.txt per sample, samples dealt out in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{n:05d}.tar" for n in range(shards)]
    per_shard = -(-len(rows) // shards)
    for n, path in enumerate(paths):
        with tarfile.open(path, "w") as tar:
            for i in range(n * per_shard, min((n + 1) * per_shard, len(rows))):
                for suffix, data in (("jpg", rows[i][0]), ("txt", rows[i][1].encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return paths


def make_hf(root, count: int = 48, seed: int = 3) -> dict[str, Path]:
    """root/captions.parquet (TRL layout, images embedded) + root/shards/0000{0,1}.tar (WebDataset)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = caption_rows(count, seed)
    trl_dataset(rows).to_parquet(str(root / "captions.parquet"))
    write_shards(rows, root / "shards", 2)
    return {"parquet": root / "captions.parquet", "shards": root / "shards" / "*.tar"}


# The questions make_small_shapes asks about each image; the qtype ends each row's id.
SMALL_SHAPE_QUESTIONS = {"shape": "what shape is in the image?", "color": "what colour is the shape?"}


def make_small_shapes(root, count: int, seed: int, size: int = 256, radius: tuple[int, int] = (8, 12)) -> Path:
    """A task where resolution matters: root/images/*.png, each one small shape (half-width in
    `radius` px) on a `size` px canvas, and root/questions.jsonl (JSONL messages) asking three
    questions of each: its shape, its colour, and "is there a <colour> shape?" / "is there a
    <shape>?" about the true or another word at even odds (yes/no). Row ids are "<image>-<qtype>".
    The folder appears whole or not at all; returns the JSONL path."""
    root = Path(root)
    rng = random.Random(seed)
    rows = []
    with atomic_folder(root) as tmp:
        (tmp / "images").mkdir()
        for i in range(count):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            name = f"images/{i:06d}.png"  # PNG: JPEG's ringing would blur the few pixels a shape has
            draw_shape(color, shape, size=size, seed=seed * 100_000 + i, radius=radius).save(tmp / name)
            rows += [_row(f"{i:06d}-{qtype}", name, question, answer)
                     for qtype, question, answer in _small_shape_questions(rng, color, shape)]
        (tmp / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "questions.jsonl"


def _small_shape_questions(rng: random.Random, color: str, shape: str) -> list[tuple[str, str, str]]:
    """(qtype, question, answer) for one image."""
    kind = rng.choice(("color", "shape"))
    truth, choices = (color, list(COLORS)) if kind == "color" else (shape, list(SHAPES))
    asked = truth if rng.random() < 0.5 else rng.choice([c for c in choices if c != truth])
    yes_no = f"is there a {asked} shape?" if kind == "color" else f"is there a {asked}?"
    return [("shape", SMALL_SHAPE_QUESTIONS["shape"], shape), ("color", SMALL_SHAPE_QUESTIONS["color"], color),
            ("yes/no", yes_no, "yes" if asked == truth else "no")]


def _row(row_id: str, image: str, question: str, answer: str) -> dict:
    """One JSONL messages row: the image, then the question; the answer."""
    return {"id": row_id, "messages": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "\n" + question}]},
        {"role": "assistant", "content": answer}]}


def make_all(root, audio: bool = True, hf: bool = False) -> dict[str, Path]:
    root = Path(root)
    out = {"coco": make_coco(root / "coco"), "llava": make_llava(root / "llava")}
    if audio:
        out["asr"] = make_asr(root / "asr")
    if hf:
        out.update({f"hf {kind}": path for kind, path in make_hf(root / "hf").items()})
    return out
