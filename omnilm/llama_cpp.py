"""Where llama.cpp is: the binaries the GGUF tests and README run, and the converter the export uses.

scripts/llama_cpp.sh builds llama.cpp from the source in llama-cpp-python's sdist into
~/.cache/omnilm/llama.cpp-VERSION (or $OMNILM_LLAMA_CPP): bin/llama-mtmd-cli, bin/llama-server,
and src/ (convert_hf_to_gguf.py and the gguf-py it imports).
"""
from __future__ import annotations

import os
from pathlib import Path

from omnilm.errors import OmniError

VERSION = "0.3.36"  # llama-cpp-python's version, as in scripts/llama_cpp.sh
SETUP = "bash scripts/llama_cpp.sh"


class LlamaCppMissing(OmniError):
    """llama.cpp's source or binaries are not where omnilm looks."""


def home() -> Path:
    if os.environ.get("OMNILM_LLAMA_CPP"):
        return Path(os.environ["OMNILM_LLAMA_CPP"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "omnilm" / f"llama.cpp-{VERSION}"


def _found(path: Path, what: str) -> Path:
    if not path.exists():
        raise LlamaCppMissing(f"{what} not found at {path}: build llama.cpp {VERSION} with `{SETUP}` "
                              "(or point OMNILM_LLAMA_CPP at a folder with bin/ and src/)")
    return path


def binary(name: str) -> Path:
    """A llama.cpp program: llama-mtmd-cli or llama-server."""
    return _found(home() / "bin" / name, name)


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py (it imports the gguf-py beside it)."""
    return _found(home() / "src" / "convert_hf_to_gguf.py", "llama.cpp's convert_hf_to_gguf.py")
