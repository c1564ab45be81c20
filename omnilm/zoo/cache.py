"""Where converted weights live, how they are written, and how missing packages are reported.

Converters build a folder once and reuse it. A folder is written under a temporary name beside
its final place and renamed at the end, so a crash or Ctrl-C midway never leaves a half-written
folder that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from omnilm.errors import MissingDependency
from omnilm.files import TMP, atomic_folder

CACHE_ENV = "OMNILM_CACHE"


def cache_dir() -> Path:
    """`$OMNILM_CACHE` if set, else `~/.cache/omnilm`. Not created here (no I/O until a write)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "omnilm"


def require_package(import_name: str, pip_spec: str) -> Path:
    """Return the installed package's folder, or raise MissingDependency with the install line.

    The folder is found with find_spec instead of importing: the weight packages declare
    dependencies (llama-cpp-python, CUDA torch, ...) that we deliberately skip with --no-deps,
    so their __init__ may fail to import although the files we need are there.
    """
    hint = f"pip install --no-deps {pip_spec}"
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError) as exc:
        raise MissingDependency(f"cannot locate package {import_name!r} ({exc}); install it with: {hint}") from exc
    if spec is None:
        raise MissingDependency(f"package {import_name!r} is not installed; install it with: {hint}")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:  # a single-module distribution
        return Path(spec.origin).parent
    raise MissingDependency(f"package {import_name!r} has no files on disk; reinstall it with: {hint}")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; on success it becomes `target` in one rename.

    Several processes may fill the same cache at once, so each writes its own temporary folder,
    and if another finished first its result is kept and ours dropped: both came from the same
    inputs.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP}")
    with atomic_folder(target, keep_existing=True, tmp=tmp) as tmp:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for path in tmp.rglob("*"):  # some writers (safetensors) create private files; a cache is shared
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
