"""Shared fixtures: generated data in public formats and tiny random recipes."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see omnilm/cli.py

# What a user's shell may carry that changes what the code under test does: hub mode and login,
# visible GPUs, proxies. No test sees them; one that needs a value sets it (monkeypatch.setenv).
# The offline zoo's converted weights stay where they are (~/.cache/omnilm or $OMNILM_CACHE).
ISOLATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN",
                "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
                "CUDA_VISIBLE_DEVICES", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                "http_proxy", "https_proxy", "all_proxy", "no_proxy")
# Removed now as well as before each test: huggingface_hub and datasets read several of them once,
# when first imported (huggingface_hub.constants.HF_HUB_OFFLINE), which is after this line.
for _name in ISOLATED_ENV:
    os.environ.pop(_name, None)
# A hub home of our own, so a saved login (~/.cache/huggingface/token) never reaches a test.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="omnilm-tests-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

import pytest  # noqa: E402

from omnilm.config import load_recipe  # noqa: E402
from omnilm.data.fixtures import make_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    paths = make_all(root)
    return {"root": root, "coco": paths["coco"], "coco_images": root / "coco" / "train2017",
            "llava": paths["llava"], "llava_images": root / "llava" / "images"}


def tiny_recipe(tiny_data, tmp_path, name: str = "tiny-stage1.yaml", **sections):
    """The shipped tiny recipe, pointed at the generated data and a temporary run folder."""
    overrides = {"data": {"path": str(tiny_data["coco"]), "image_dir": str(tiny_data["coco_images"])},
                 "train": {"output_dir": str(tmp_path / "run")}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_recipe(CONFIGS / name, overrides)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch):
    """Also gone if something set one since (a test, a subprocess helper, a library at import)."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)


# Skips that describe the machine, not a missing install step (e.g. a libsndfile build without mp3).
ALLOWED_CI_SKIPS = ("cannot write",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI everything is installed by scripts/setup.sh, so a skip there hides breakage: fail it."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not any(a in str(report.longrepr) for a in ALLOWED_CI_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where setup installs everything: {report.longrepr}"


# The serving tests' tiny server (tests/test_serve.py, tests/test_serve_requests.py): one per module.
SERVED_NAME = "tiny"
SERVE_BODY_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from test_serve_support import write_tiny_model

    from omnilm.model.saved import load_pretrained
    from omnilm.serve.engine import Engine
    from omnilm.serve.limits import Limits

    model, processor = load_pretrained(write_tiny_model(tmp_path_factory.mktemp("tiny-model")))
    engine = Engine(model, processor, Limits(max_body_bytes=SERVE_BODY_LIMIT, max_new_tokens=200)).start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine):
    from test_serve_support import free_port, running_server

    from omnilm.serve.api import ServerState, create_app

    with running_server(create_app(ServerState(engine, SERVED_NAME)), free_port()) as url:
        yield url
