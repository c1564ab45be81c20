"""Small benchmark copies in exactly their hub schema (column names and types, the image column a
`datasets` Image feature), written by the tests: no benchmark data reaches these machines."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def png(shade: int) -> Image.Image:
    return Image.new("RGB", (32, 32), (shade, 255 - shade, 128))


def png_bytes(shade: int) -> bytes:
    buf = io.BytesIO()
    png(shade).save(buf, format="PNG")
    return buf.getvalue()


# lmms-lab/POPE, split test: id, question_id, question, answer, image_source, image, category.
POPE_FEATURES = {"id": "string", "question_id": "string", "question": "string", "answer": "string",
                 "image_source": "string", "image": "image", "category": "string"}
# lmms-lab/MME, split test: question_id (the image's file name), image, question, answer, category.
MME_FEATURES = {"question_id": "string", "image": "image", "question": "string", "answer": "string",
                "category": "string"}


def features(schema: dict):
    import datasets

    return datasets.Features({name: datasets.Image() if kind == "image" else datasets.Value(kind)
                              for name, kind in schema.items()})


def write_parquet(rows: list[dict], schema: dict, path: Path) -> Path:
    """rows with PIL images -> a parquet file as the hub's parquet conversion stores it."""
    import datasets

    columns = {name: [row[name] for row in rows] for name in schema}
    datasets.Dataset.from_dict(columns, features=features(schema)).to_parquet(str(path))
    return path


def write_saved(rows: list[dict], schema: dict, folder: Path, split: str = "test") -> Path:
    """rows -> a save_to_disk folder holding a DatasetDict with one split."""
    import datasets

    columns = {name: [row[name] for row in rows] for name in schema}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(columns, features=features(schema))}).save_to_disk(str(folder))
    return folder
