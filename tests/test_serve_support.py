"""Helpers shared by the serving tests: a tiny model folder, a uvicorn server in a thread, and a
server process started, awaited and always stopped."""
from __future__ import annotations

import base64
import io
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from omnilm.config import load_recipe, save_recipe
from omnilm.model.build import build_model, materialize_random, portable
from omnilm.model.saved import RECIPE_FILE
from omnilm.model.checkpoint import save_trained_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Room for a few turns with 16-token images; the tiny LLM's context is 256 positions.
TINY_OVERRIDES = {"data": {"max_length": 256}}


def write_tiny_model(folder: Path, audio: bool = False) -> Path:
    """A loadable model folder (recipe.yaml + weights) with random tiny parts, like a trained run."""
    overrides = dict(TINY_OVERRIDES)
    if audio:
        overrides["model"] = {"audio": {
            "type": "whisper", "stack_frames": 8, "max_seconds": 10.0,
            "random_config": {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
                              "encoder_ffn_dim": 64, "num_mel_bins": 80, "max_source_positions": 1500}}}
    recipe = materialize_random(load_recipe(CONFIGS / "tiny-stage1.yaml", overrides), folder / "base")
    model, _ = build_model(recipe)
    save_trained_weights(model, folder)
    save_recipe(portable(recipe, folder), folder / RECIPE_FILE)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Terminate `process`, killed if it outlives `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def serving(command: list[str], log_path: Path, ready, what: str, seconds: float = 60.0, **popen):
    """Run `command` (its output to `log_path`) and wait until `ready()` is true, failing with the
    log's tail if it exits or takes over `seconds`; stopped on exit."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited ({process.returncode}):\n{Path(log_path).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start in {seconds} s:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.3)
        yield process
    finally:
        stop(process)


@contextmanager
def running_server(app, port: int, startup_timeout: float = 30.0):
    """uvicorn in a background thread of this process; stopped (not killed) on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def png_bytes(color=(200, 30, 30), size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()
