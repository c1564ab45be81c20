"""Optional packages: which extra of pyproject.toml installs each, and the one-line hint when one is missing.

tests/test_packaging.py checks this table against pyproject.toml, so a hint never names an
extra that does not install the package.
"""
from __future__ import annotations

import importlib

from omnilm.errors import MissingDependency

# import name -> the extra that installs it (`pip install 'omnilm[extra]'`)
EXTRA_OF = {
    "datasets": "hf",
    "fastapi": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "pydantic_core": "serve",
    "uvicorn": "serve",
    "gradio": "serve",
    "httpx": "serve",
    "pycocoevalcap": "eval",
    "jiwer": "eval",
    "bitsandbytes": "qlora",
    "ctranslate2": "transcribe",
    "efficientnet_lite_pytorch": "zoo",
    "gguf": "gguf",
    "sentencepiece": "gguf",
}


def install_hint(module: str, needed_for: str) -> str:
    top = module.split(".")[0]
    return f"{needed_for} needs the {top} package: pip install 'omnilm[{EXTRA_OF[top]}]'"


def missing_optional(err: ModuleNotFoundError) -> str | None:
    """The optional package whose absence raised `err`, or None (a missing core package or a bug)."""
    top = (err.name or "").split(".")[0]
    return top if top in EXTRA_OF else None


def require(module: str, needed_for: str):
    """Import an optional module, or raise MissingDependency with its install line."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if missing_optional(err) is None:
            raise
        raise MissingDependency(install_hint(err.name, needed_for)) from None
