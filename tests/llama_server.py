"""llama.cpp's llama-server for the GGUF tests: started on 127.0.0.1, bounded, always stopped."""
from __future__ import annotations

import base64
import contextlib
import io
import socket
import subprocess
import time

import httpx

from omnilm.llama_cpp import binary

START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(text_gguf, mmproj_gguf, log_path, threads: int = 2):
    """Yield the base URL of a llama-server over the two files; its log goes to `log_path`."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(binary("llama-server")), "-m", str(text_gguf), "--mmproj", str(mmproj_gguf), "--host", "127.0.0.1",
             "--port", str(port), "-c", "2048", "-t", str(threads), "-np", "1", "--no-webui", "--no-warmup", "--seed", "0"],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"llama-server exited ({process.returncode}):\n{open(log_path).read()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server did not start in {START_SECONDS} s:\n{open(log_path).read()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def image_part(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


def audio_part(wav_bytes: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes).decode(), "format": "wav"}}


def chat(url: str, parts: list[dict], max_tokens: int = 6) -> dict:
    """Greedy reply with the first tokens' top log-probabilities: {"text", "logprobs"}."""
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": max_tokens,
        "logprobs": True, "top_logprobs": 5})
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    return {"text": choice["message"]["content"], "logprobs": choice["logprobs"]["content"]}
