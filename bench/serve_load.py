"""Serving under load: `omnilm serve` on a tiny random model, N concurrent chat requests.

Builds the tiny test model (configs/tiny-stage1.yaml shapes, random weights) in a temporary
folder, starts `omnilm serve` on it as a separate process on 127.0.0.1, waits for /health, then
sends --requests chat completions all at once (half text, half with a small inline PNG), each
bounded by --timeout and the whole run by --deadline. Prints latency p50 / p95 / max, the status
code counts and requests per second, and exits 1 if any request got a 5xx or no answer at all.

    .venv/bin/python bench/serve_load.py --requests 200
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_serve_support import free_port, stop, write_tiny_model  # noqa: E402  the serving tests' tiny model

MODEL = "tiny"


def png_data_url(i: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (37 * i % 256, 80, 160)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_body(i: int, max_tokens: int) -> dict:
    text = f"question number {i}: what is in the picture?"
    content = [{"type": "image_url", "image_url": {"url": png_data_url(i)}}, {"type": "text", "text": text}] \
        if i % 2 else text
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}


async def wait_healthy(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"omnilm serve exited with code {server.returncode}")
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"omnilm serve did not become healthy within {seconds:.0f} s")


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, float]:
    started = time.monotonic()
    try:
        response = await client.post(url + "/v1/chat/completions", json=body)
        return str(response.status_code), time.monotonic() - started
    except httpx.HTTPError as err:
        return f"no answer ({type(err).__name__})", time.monotonic() - started


async def load(url: str, requests: int, max_tokens: int, timeout: float, deadline: float):
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        bodies = [request_body(i, max_tokens) for i in range(requests)]
        started = time.monotonic()
        tasks = [asyncio.ensure_future(one(client, url, b)) for b in bodies]
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        elapsed = time.monotonic() - started
    results = [t.result() for t in done] + [("not finished by the deadline", deadline)] * len(pending)
    return results, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    load1, load5, load15 = os.getloadavg()
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}, "
            f"avx512f: {'yes' if 'avx512f' in flags else 'no'}), load average {load1:.2f} {load5:.2f} {load15:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sent all at once")
    parser.add_argument("--max-tokens", type=int, default=16, help="per request (greedy)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds the whole load may take")
    parser.add_argument("--max-batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = write_tiny_model(Path(tmp) / "tiny-model")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "omnilm.cli", "serve", "--model", str(folder), "--model-name", MODEL,
                   "--port", str(port), "--no-ui", "--max-batch-size", str(args.max_batch_size)]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            asyncio.run(wait_healthy(url, server, 120))
            print(f"machine: {machine()} (before)")
            results, elapsed = asyncio.run(load(url, args.requests, args.max_tokens, args.timeout, args.deadline))
            healthy = httpx.get(url + "/health", timeout=10).json()
            print(f"machine: {machine()} (after)")
        finally:
            stop(server, grace=30)
    codes = collections.Counter(code for code, _ in results)
    latencies = [seconds for code, seconds in results if code.isdigit()]
    print(f"{args.requests} concurrent chat requests (half with a 32x32 PNG), max_tokens {args.max_tokens}, "
          f"greedy, max batch {args.max_batch_size}")
    print(f"status codes: {dict(sorted(codes.items()))}")
    if latencies:
        print(f"latency: p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
              f"max {max(latencies):.2f} s")
    print(f"throughput: {len(latencies) / elapsed:.1f} requests/s ({elapsed:.1f} s for all)")
    print(f"health after: {healthy}")
    failed = sum(n for code, n in codes.items() if not code.isdigit() or code.startswith("5"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
