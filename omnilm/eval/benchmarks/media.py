"""A hub row's image cell -> what omnilm's image loader reads (bytes, a path or a PIL image)."""
from __future__ import annotations

from omnilm.errors import DataError


def image_of(cell, column: str = "image"):
    """The `datasets` Image feature stores {"bytes", "path"} undecoded, a PIL image decoded."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return cell["path"]
        raise DataError(f"column {column!r}: the image has neither bytes nor a path")
    if isinstance(cell, (bytes, str)) and cell:
        return cell
    if cell is not None and hasattr(cell, "convert"):  # a decoded PIL image
        return cell
    raise DataError(f"column {column!r}: expected an image, got {type(cell).__name__}")


def column(row: dict, name: str, kind: type | tuple[type, ...] = str):
    """row[name], checked to be of `kind` (a type or a tuple of them); a missing or mistyped cell
    names the column."""
    if name not in row:
        raise DataError(f"no column {name!r} (the row has {', '.join(sorted(row))})")
    value = row[name]
    if not isinstance(value, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"column {name!r}: expected {kinds}, got {type(value).__name__}")
    return value
