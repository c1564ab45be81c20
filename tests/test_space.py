"""`omnilm space`: the folder is a Gradio Space that runs from a copy of itself alone, and it
answers in a browser; bad input and an offline --push leave no folder behind."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from test_serve_support import free_port, serving, write_tiny_model
from test_webui import TIMEOUT_MS, ask_about_image, browser  # noqa: F401  (browser: the headless chromium fixture)

import omnilm
from omnilm.cli import main
from omnilm.model.saved import is_model_folder, load_pretrained
from omnilm.space import MAX_SHORT_DESCRIPTION, _extras_for

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("space-model") / "tiny-run")


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "tiny-space"
    assert main(["space", "--model", str(tiny_run), "--out", str(out), "--title", "Tiny chat"]) == 0
    return out


def _front_matter(readme: Path) -> dict:
    _, meta, _ = readme.read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(meta)


def _pins(text: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))


def test_the_folder_is_what_a_gradio_space_reads(bundle):
    meta = _front_matter(bundle / "README.md")
    pins = _pins((bundle / "requirements.txt").read_text())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (bundle / "app.py").is_file()
    assert meta["sdk_version"] == pins["gradio"]
    assert meta["title"] == "Tiny chat" and meta["license"] == "apache-2.0"
    assert 0 < len(meta["short_description"]) <= MAX_SHORT_DESCRIPTION
    # Exactly the repository's pins, torch as its CPU build.
    repo_pins = _pins((ROOT / "requirements.txt").read_text())
    assert pins.pop("torch") == repo_pins["torch"].split("+")[0] + "+cpu"
    assert {name: repo_pins.get(name) for name in pins} == pins
    assert {"transformers", "gradio", "fastapi", "huggingface-hub"} <= set(pins)
    # The model as a model folder, without what only training reads.
    assert is_model_folder(bundle / "model")
    assert not (bundle / "model" / "weights.safetensors").exists()
    assert (bundle / "omnilm" / "cli.py").is_file() and not list(bundle.rglob("__pycache__"))


def test_the_pins_follow_the_models_layers_not_what_the_process_imported(tiny_run):
    import bitsandbytes
    import ctranslate2  # noqa: F401  (imported here, used by no layer of the model)
    import gguf  # noqa: F401

    model, processor = load_pretrained(tiny_run)
    assert _extras_for(model, processor) == ()
    model.add_module("probe", bitsandbytes.nn.Linear4bit(4, 4))
    assert _extras_for(model, processor) == ("qlora",)


@contextmanager
def running_app(folder: Path, log: Path, **env):
    """`python app.py` in `folder` with no PYTHONPATH, on 127.0.0.1 and a free port -> its address;
    terminated (killed if it hangs) on exit."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env,
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "app.py"], log, lambda: _answers(url), "app.py", START_TIMEOUT_S, cwd=folder,
                 env=env):
        yield url

@pytest.fixture(scope="module")
def space_app(bundle, tmp_path_factory):
    """app.py run from a copy of the folder, with no PYTHONPATH: only the copy's own omnilm."""
    copy = tmp_path_factory.mktemp("space-copy") / "space"
    shutil.copytree(bundle, copy)
    log = copy.parent / "app.log"
    with running_app(copy, log, HF_HUB_OFFLINE="1") as url:
        yield url, copy, log


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_app_runs_from_a_copy_and_answers_in_the_browser(browser, space_app, tmp_path):  # noqa: F811
    from PIL import Image, ImageDraw

    url, copy, log = space_app
    first_line = log.read_text().splitlines()[0]
    assert first_line == f"omnilm {omnilm.__version__} from {copy / 'omnilm'}", first_line  # not the source tree's omnilm
    picture = tmp_path / "shape.png"
    img = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(img).rectangle((16, 16, 80, 80), fill=(200, 30, 30))
    img.save(picture)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/")
    page.get_by_text("omnilm chat: tiny-run").first.wait_for()  # the run's name, not the bundle's "model"
    ask_about_image(page, picture, "What colour is the shape?")
    page.locator("[data-testid=user] img").first.wait_for()
    answer = page.locator("[data-testid=bot]").last
    answer.wait_for()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not answer.inner_text().strip() and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert answer.inner_text().strip(), "the assistant's answer is empty"
    page.close()


def test_hub_model_space_names_the_id_and_fails_clearly_offline(tmp_path):
    out = tmp_path / "hub-space"
    assert main(["space", "--hub-model", "someone/tiny-omni", "--out", str(out)]) == 0
    assert not (out / "model").exists()
    assert _front_matter(out / "README.md")["title"] == "tiny-omni"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(free_port()))
    done = subprocess.run([sys.executable, "app.py"], cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "omnilm: error: cannot download the model someone/tiny-omni from the hub")


def test_hub_model_space_starts_from_the_hub_cache(tiny_run, tmp_path):
    """Offline, a hub model already in the cache (its layout: refs/main -> snapshots/<commit>/)
    is what snapshot_download returns: the Space serves it under the hub id."""
    from omnilm.model.saved import load_pretrained, write_model_folder

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-omni"
    write_model_folder(*load_pretrained(tiny_run), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "hub-space"
    assert main(["space", "--hub-model", "someone/tiny-omni", "--out", str(out)]) == 0
    log = tmp_path / "app.log"
    with running_app(out, log, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache)):
        assert f"serving {repo / 'snapshots' / commit} as 'someone/tiny-omni'" in log.read_text()


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the refusals below must come before the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_push_offline_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch, capsys, no_network):
    out = tmp_path / "space"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["space", "--model", str(tiny_run), "--out", str(out), "--push", "someone/tiny-space"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnilm: error: --push someone/tiny-space: HF_HUB_OFFLINE is set") and "\n" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_push_without_a_login_is_refused_before_any_work(tiny_run, tmp_path, capsys, no_network):
    out = tmp_path / "space"
    assert main(["space", "--model", str(tiny_run), "--out", str(out), "--push", "someone/tiny-space"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnilm: error: --push someone/tiny-space: not logged in") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--hub-model", "not a repo id"], "--hub-model 'not a repo id': not a hub model id"),
    (["--hub-model", "someone/m", "--license", "Apache 2"], "--license 'Apache 2': not a hub license id"),
])
def test_bad_settings_are_named_and_leave_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "space"
    assert main(["space", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_is_not_a_model_leaves_nothing(tmp_path, capsys):
    (tmp_path / "not-a-model").mkdir()
    assert main(["space", "--model", str(tmp_path / "not-a-model"), "--out", str(tmp_path / "space")]) == 2
    assert "is not an omnilm model or run folder" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()


def test_an_existing_folder_not_written_by_space_is_kept(tmp_path, capsys):
    keep = tmp_path / "my-work"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    assert main(["space", "--hub-model", "someone/m", "--out", str(keep)]) == 2
    assert "an existing folder that `omnilm space` did not write" in capsys.readouterr().err
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]


def test_an_earlier_space_is_replaced_and_a_failed_build_leaves_it_whole(tmp_path, monkeypatch):
    import omnilm.space

    out = tmp_path / "space"
    assert main(["space", "--hub-model", "someone/first", "--out", str(out)]) == 0
    assert main(["space", "--hub-model", "someone/second", "--out", str(out)]) == 0
    assert "someone/second" in (out / "app.py").read_text()

    def fail(*args, **kwargs):  # the disk, the copy, anything failing mid-build
        raise OSError("simulated failure")

    monkeypatch.setattr(omnilm.space, "space_readme", fail)
    with pytest.raises(OSError):
        main(["space", "--hub-model", "someone/third", "--out", str(out)])
    assert "someone/second" in (out / "app.py").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # no temporary folder left
