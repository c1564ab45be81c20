"""Where converted weights live, how they are written, and how missing packages are reported.

Converters build a folder once and reuse it. A folder is written under a temporary name beside
its final place and renamed at the end, so a crash or Ctrl-C midway never leaves a half-written
folder that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from omnilm.errors import MissingDependency

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

    The temp folder sits in the same parent so the rename stays on one filesystem (atomic).
    If another process finished the same folder first, its result is kept and ours dropped:
    both came from the same inputs.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        # mkdtemp makes the folder private (0700); a cache folder should get the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for path in tmp.rglob("*"):  # some writers (safetensors) also create private files
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
