"""llama.cpp's llama-server for the GGUF tests: started on 127.0.0.1, bounded, always stopped."""
from __future__ import annotations

import base64
import contextlib
import io

import httpx

from omnilm.llama_cpp import binary
from tests.test_serve_support import data_url, free_port, serving

START_SECONDS = 60


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def llama_server(text_gguf, mmproj_gguf, log_path, threads: int = 2, extra: tuple[str, ...] = ()):
    """Yield the base URL of a llama-server over the two files; its log goes to `log_path`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(binary("llama-server")), "-m", str(text_gguf), "--mmproj", str(mmproj_gguf), "--host", "127.0.0.1",
               "--port", str(port), "-c", "2048", "-t", str(threads), "-np", "1", "--no-webui", "--no-warmup",
               "--seed", "0", *extra]
    with serving(command, log_path, lambda: _healthy(url), "llama-server", START_SECONDS):
        yield url


def image_part(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": data_url(buffer.getvalue())}}


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
