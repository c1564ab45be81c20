"""Atomic writes: a file or folder exists complete under its name, or the old one does, never half.

Everything is first written under a temporary name beside the target (same file system, so the
final rename is atomic). A folder that replaces an existing one cannot be swapped in one rename,
so the old folder is renamed aside (`name.old`), the new one renamed in, and only then the old one
removed; `recover` (called before every write, and by readers of replaceable folders) puts an
aside folder back if a kill fell between the two renames. A full disk becomes one `DiskFull` line
naming what was written, how much it needs and how much is free.

Imports nothing of omnilm above `errors`, so every layer can use it.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from omnilm.errors import OmniError

TMP = ".tmp"  # suffix of a file or folder still being written
ASIDE = ".old"  # suffix of a folder being replaced, until its successor is in place


class DiskFull(OmniError):
    """The disk filled up while saving; nothing half-written is left."""


def temp_path(target: Path) -> Path:
    """The fixed temporary name of `target` (several processes of one run agree on it)."""
    target = Path(target)
    return target.with_name(target.name + TMP)


def aside_path(target: Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ASIDE)


def remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(target: Path) -> None:
    """Finish a replacement a kill interrupted: the aside copy comes back if `target` is missing,
    and goes if `target` (the new one) is in place."""
    aside = aside_path(target)
    if not aside.exists():
        return
    if Path(target).exists():
        remove(aside)
    else:
        os.replace(aside, target)


def clean_folder(folder: Path) -> None:
    """What killed writes left in `folder`: temporaries removed, interrupted replacements recovered."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for aside in folder.glob(f"*{ASIDE}"):
        recover(aside.with_name(aside.name.removesuffix(ASIDE)))
    for stale in folder.glob(f"*{TMP}"):
        remove(stale)


def is_disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def disk_full(target: Path, needed: int | None = None) -> DiskFull:
    """The one-line error: what was being written, how much it needs, how much is free."""
    target = Path(target)
    free = shutil.disk_usage(next(p for p in (target, *target.parents) if p.exists())).free
    need = f"it needs about {size_text(needed)}, " if needed else ""
    return DiskFull(f"disk full while writing {target}: {need}{size_text(free)} free on that disk; "
                    "free some space and run again")


def size_text(num_bytes: int) -> str:
    return tqdm.format_sizeof(num_bytes, "B")  # 148kB, 2.00MB, 12.3GB


@contextmanager
def _cleaned_on_failure(tmp: Path, target: Path, needed: int | None):
    """Any failure removes the partial `tmp`; one caused by a full disk becomes DiskFull."""
    try:
        yield
    except BaseException as err:
        remove(tmp)
        # torch.save reports a full disk as a bare RuntimeError, so the free space decides too.
        if isinstance(err, Exception) and (is_disk_full(err) or needed is not None
                                           and shutil.disk_usage(Path(target).parent).free < needed):
            raise disk_full(target, needed) from None
        raise


@contextmanager
def atomic_file(target: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a path to write; once the block ends it becomes `target` in one rename (which
    replaces an existing file atomically). The temporary name is unique, so concurrent writers
    of the same file never write into each other's."""
    target = Path(target)
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}{TMP}")
    with _cleaned_on_failure(tmp, target, needed):
        yield tmp
        os.replace(tmp, target)


@contextmanager
def atomic_folder(target: Path, needed: int | None = None, *, keep_existing: bool = False,
                  tmp: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes `target` only once the block ends.

    An existing `target` is replaced (old aside, new in, old removed), or with `keep_existing`
    kept and ours dropped (a cache another process filled first from the same inputs). `tmp`
    names the temporary folder when it must be unique (concurrent writers); by default it is
    `target` + TMP, which the next write or `clean_folder` removes after a kill. `needed`
    (bytes) sizes the message if the disk fills up."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tmp) if tmp is not None else temp_path(target)
    remove(tmp)
    tmp.mkdir()
    with _cleaned_on_failure(tmp, target, needed):
        yield tmp
        if not target.exists():
            try:
                os.replace(tmp, target)
                return
            except OSError:
                if not (keep_existing and target.is_dir()):  # not another writer that came first
                    raise
        if keep_existing:
            remove(tmp)
        else:
            _replace_folder(tmp, target)


def _replace_folder(new: Path, target: Path) -> None:
    aside = aside_path(target)
    remove(aside)
    os.replace(target, aside)
    try:
        os.replace(new, target)  # a kill before this line leaves `aside`, which recover() puts back
    except BaseException:
        os.replace(aside, target)
        raise
    remove(aside)
