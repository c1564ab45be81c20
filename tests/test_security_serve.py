"""Hostile input to `omnilm serve`: the web app's file arguments, image and audio sizes, remote images.

Every server here listens on 127.0.0.1, and no test opens a connection anywhere else: refused
addresses are checked with a socket guard, a stubbed resolver and httpx's MockTransport.
"""
from __future__ import annotations

import io
import os
import resource
import socket
import struct
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from test_serve_support import data_url, free_port, png_bytes, running_server, write_tiny_model

from omnilm.data.audio import load_audio
from omnilm.data.images import ImageTransform, load_image
from omnilm.errors import MediaError
from omnilm.model.saved import load_pretrained
from omnilm.serve import media
from omnilm.serve.api import ServerState, create_app
from omnilm.serve.engine import Engine
from omnilm.serve.errors import APIError
from omnilm.serve.limits import Limits

MODEL = "tiny"
KEY = "sk-ui-key"
PARAM = "messages[0].content[0].image_url.url"
FILE = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = Engine(*load_pretrained(write_tiny_model(tmp_path_factory.mktemp("tiny-model")))).start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def ui_server(engine):
    with running_server(create_app(ServerState(engine, MODEL), ui=True), free_port()) as url:
        yield url


def chat_body(content) -> dict:
    return {"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": content}]}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


# ---- the web app reads only what was uploaded through it ----

def call_ui(client: httpx.Client, base: str, data: list) -> str:
    """One call of the app's `respond` through Gradio's HTTP API -> the event stream's text."""
    started = client.post(base + "/ui/gradio_api/call/respond", json={"data": data})
    started.raise_for_status()
    return client.get(base + f"/ui/gradio_api/call/respond/{started.json()['event_id']}", timeout=60).text


def ui_inputs(message="What is this?", image=None, audio=None, history=None) -> list:
    return [message, image, None, audio, 4, 0.0, history or []]  # None: no "more images"


def test_web_app_never_copies_or_serves_a_server_file(ui_server, tmp_path):
    from gradio.utils import get_upload_folder

    secret = tmp_path / f"secret-{uuid.uuid4().hex}.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    upload_dir = Path(get_upload_folder())
    through_upload_dir = str(upload_dir / os.path.relpath(secret, upload_dir))  # /tmp/gradio/../...
    named = {"path": str(secret), "meta": FILE}
    attempts = {
        "image": ui_inputs(image=named),
        "audio": ui_inputs(audio=named),
        "image via ..": ui_inputs(image={"path": through_upload_dir, "meta": FILE}),
        # The conversation comes back from the browser too, and Gradio copies its files.
        "history": ui_inputs(history=[{"role": "user", "content": [{"type": "file", "file": named}]}]),
    }
    with httpx.Client() as client:
        for what, data in attempts.items():
            stream = call_ui(client, ui_server, data)
            assert "TOP-SECRET" not in stream, what
            assert "not uploaded by a user" in stream, (what, stream[-500:])
    assert not list(upload_dir.rglob(secret.name)), "the file was copied into Gradio's cache"


def test_web_app_still_takes_uploads_and_its_examples(ui_server):
    with httpx.Client() as client:
        uploaded = client.post(ui_server + "/ui/gradio_api/upload",
                               files={"files": ("shape.png", png_bytes(), "image/png")})
        uploaded.raise_for_status()
        stream = call_ui(client, ui_server, ui_inputs(image={"path": uploaded.json()[0], "meta": FILE}))
        assert "event: complete" in stream, stream[-500:]
        example = next(c["props"]["samples"] for c in client.get(ui_server + "/ui/config").json()["components"]
                       if c.get("type") == "dataset")[0][0]  # the first example's image, as the page sends it
        assert example["orig_name"] == "red-square.png"
        stream = call_ui(client, ui_server, ui_inputs(image=example))
        assert "event: complete" in stream, stream[-500:]


def test_web_app_uploads_are_capped_at_the_body_limit(engine):
    small = ServerState(engine, MODEL, limits=Limits(max_body_bytes=50_000))
    with running_server(create_app(small, ui=True), free_port()) as url:
        big = httpx.post(url + "/ui/gradio_api/upload", files={"files": ("big.png", b"x" * 60_000, "image/png")})
        assert big.status_code == 413, big.text
        ok = httpx.post(url + "/ui/gradio_api/upload", files={"files": ("ok.png", png_bytes(), "image/png")})
        assert ok.status_code == 200


def test_web_app_needs_the_api_key(engine):
    with running_server(create_app(ServerState(engine, MODEL, api_key=KEY), ui=True), free_port()) as url:
        with httpx.Client() as stranger:
            assert stranger.get(url + "/ui/config").status_code == 401
            assert stranger.post(url + "/ui/gradio_api/call/respond", json={"data": ui_inputs()}).status_code == 401
            assert stranger.post(url + "/ui/gradio_api/upload",
                                 files={"files": ("a.png", png_bytes(), "image/png")}).status_code == 401
            assert stranger.post(url + "/ui/login", data={"username": "me", "password": "wrong"}).status_code != 200
        with httpx.Client() as user:
            assert user.post(url + "/ui/login", data={"username": "me", "password": KEY}).status_code == 200
            assert "event: complete" in call_ui(user, url, ui_inputs())


# ---- image sizes are checked from the header, before decoding ----

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds the data of one row: decoding it
    would fail (truncated), so an error that names the size proves the header alone was read."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(2_000_000, 8), (1, 16_000_000)])
def test_image_strips_are_refused_from_the_header(width, height):
    with pytest.raises(MediaError, match=f"{width}x{height}; the limit is 16384 pixels a side"):
        load_image(png_header(width, height), name="strip", max_pixels=16_000_000, max_side=16_384)


def test_image_with_too_many_pixels_is_refused_from_the_header():
    with pytest.raises(MediaError, match="6000x6000 = 36000000 pixels; the limit is 16000000"):
        load_image(png_header(6000, 6000), name="square", max_pixels=16_000_000, max_side=16_384)


def test_strip_images_are_a_fast_400_on_the_api(engine):
    strips = {size: io.BytesIO() for size in [(2_000_000, 8), (1, 16_000_000)]}
    for size, buf in strips.items():
        Image.new("1", size).save(buf, format="PNG")  # real, complete PNGs of a few kB
    with running_server(create_app(ServerState(engine, MODEL)), free_port()) as url:
        for (width, height), buf in strips.items():
            started = time.monotonic()
            response = httpx.post(url + "/v1/chat/completions", timeout=60,
                                  json=chat_body([image_part(data_url(buf.getvalue()))]))
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == PARAM and f"{width}x{height}" in error["message"]
            assert "pixels a side" in error["message"]
            assert time.monotonic() - started < 5
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_thin_strip_within_the_limits_resizes_without_a_huge_intermediate():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    pixels = ImageTransform(224)(Image.new("RGB", (16_384, 1), (200, 30, 30)))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert pixels.shape == (3, 224, 224)
    # Resizing all of it first would make a 3,670,016 x 224 image (2.4 GB) to crop 224 x 224 from.
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB"


def test_square_images_transform_exactly_as_before():
    """Square inputs (the quickstart's) keep bit-identical pixels: resize, then crop nothing."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    expected = np.asarray(image.resize((128, 128), Image.BICUBIC), dtype=np.float32) / 255.0
    got = ImageTransform(128, mean=(0, 0, 0), std=(1, 1, 1))(image).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


# ---- audio length from the header; decoding stops at the limit ----

def audio_bytes(seconds: float, rate: int = 8000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format=fmt)
    return buf.getvalue()


def flac_without_length(seconds: float) -> bytes:
    """A FLAC whose STREAMINFO says "length unknown" (total samples 0), as streaming encoders write."""
    data = bytearray(audio_bytes(seconds, fmt="FLAC"))
    fields = int.from_bytes(data[18:26], "big")  # rate, channels, bits, then 36 bits of total samples
    data[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


def test_long_audio_is_refused_from_its_header():
    with pytest.raises(MediaError, match="is 120.0 s long; the limit is 60 s"):
        load_audio(audio_bytes(120.0), max_seconds=60.0, name="long.wav")


def test_audio_without_a_length_in_its_header_is_a_clear_error():
    stream = flac_without_length(2.0)
    assert sf.info(io.BytesIO(stream)).frames > 10**15  # libsndfile's "unknown"
    for limit in (60.0, None):
        with pytest.raises(MediaError, match="stream.flac does not say how long it is"):
            load_audio(stream, max_seconds=limit, name="stream.flac")


def test_many_channels_are_mixed_down_block_by_block():
    rate, channels = 8000, 64
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, (rate * 3, channels)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    np.testing.assert_allclose(load_audio(buf.getvalue(), sampling_rate=rate), wave.mean(axis=1), atol=1e-6)


def test_absurd_sampling_rate_is_refused():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.float32), 10_000_000, format="WAV")
    with pytest.raises(MediaError, match="sampling rate of 10000000 Hz"):
        load_audio(buf.getvalue(), max_seconds=60.0, name="odd.wav")


# ---- remote images: one deadline, a size cap, public addresses only, checked redirects ----

def loopback_allowed(**limits) -> Limits:
    """Remote images on, and (for servers on 127.0.0.1 here) private addresses allowed."""
    return Limits(allow_remote_images=True, allow_private_image_hosts=True, **{"remote_timeout_s": 2.0, **limits})


def public_only(**limits) -> Limits:
    return Limits(allow_remote_images=True, **limits)  # the default policy: public addresses only


@contextmanager
def image_host(handler):
    """A tiny HTTP server on 127.0.0.1; `handler(request_line, headers, send)` answers each request."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_one(conn):
        with conn:
            head = conn.recv(65536).decode("latin-1")
            lines = head.split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            try:
                handler(lines[0], headers, conn.sendall, stop)
            except OSError:
                pass  # the client hung up, as it should at its deadline

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join()
        listener.close()


def trickle(request_line, headers, send, stop):
    """Headers at once, then one byte every second for a minute."""
    send(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 60\r\n\r\n")
    for _ in range(60):
        if stop.wait(1.0):
            return
        send(b"x")


def test_trickling_image_host_is_cut_at_the_deadline():
    with image_host(trickle) as base:
        started = time.monotonic()
        with pytest.raises(APIError) as err:
            media.fetch(base + "/slow.png", PARAM, loopback_allowed(remote_timeout_s=2.0))
        elapsed = time.monotonic() - started
    assert err.value.status == 400 and err.value.code == "image_fetch_timeout"
    assert "longer than 2 s" in err.value.message
    assert elapsed < 3.0


def test_slow_image_hosts_cannot_take_every_worker(engine):
    limits = loopback_allowed(remote_timeout_s=6.0, max_remote_fetches=2)
    with image_host(trickle) as base, \
            running_server(create_app(ServerState(engine, MODEL, limits=limits)), free_port()) as url:
        body = chat_body([image_part(base + "/slow.png")])
        slow = [threading.Thread(target=httpx.post, args=(url + "/v1/chat/completions",),
                                 kwargs={"json": body, "timeout": 30}) for _ in range(2)]
        for thread in slow:
            thread.start()
        time.sleep(1.0)  # both fetches are under way
        started = time.monotonic()
        third = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert third.status_code == 503 and third.json()["error"]["code"] == "server_busy"
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json=chat_body("hi"), timeout=30).status_code == 200
        assert time.monotonic() - started < 3.0  # none of that waited for the slow fetches (6 s)
        for thread in slow:
            thread.join()


def test_remote_image_is_fetched_from_the_checked_address_with_its_own_host_name(monkeypatch):
    seen, resolved = [], []
    picture = png_bytes()

    def answer(request_line, headers, send, stop):
        seen.append(headers.get("host"))
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(picture) + picture)

    with image_host(answer) as base:
        port = int(base.rsplit(":", 1)[1])
        monkeypatch.setattr(media, "resolve", lambda host, p: resolved.append((host, p)) or ["127.0.0.1"])
        assert media.fetch(f"http://images.example:{port}/shape.png", PARAM, loopback_allowed()) == picture
    assert resolved == [("images.example", port)]  # resolved once; the connection went to that address
    assert seen == [f"images.example:{port}"]


@pytest.fixture
def no_connections(monkeypatch):
    """Any attempt to open a socket connection fails the test (and never reaches the network)."""
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("url", ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/",
                                 "http://127.0.0.1:8080/x.png", "http://[::1]/x.png", "https://192.168.1.20/x.png",
                                 "http://[::ffff:127.0.0.1]/x.png", "http://0.0.0.0/x.png", "http://224.0.0.1/x.png",
                                 "http://100.64.0.1/x.png"])
def test_private_addresses_are_refused_without_connecting(url, no_connections):
    with pytest.raises(APIError) as err:
        media.fetch(url, PARAM, public_only())
    assert err.value.status == 400 and err.value.code == "image_host_not_allowed"
    assert "--allow-private-image-hosts" in err.value.message
    assert no_connections == []


def test_host_name_resolving_to_a_private_address_is_refused_without_connecting(monkeypatch, no_connections):
    monkeypatch.setattr(media, "resolve", lambda host, port: ["93.184.216.34", "10.20.30.40"])
    with pytest.raises(APIError) as err:
        media.fetch("http://images.example/x.png", PARAM, public_only())
    assert err.value.code == "image_host_not_allowed" and "images.example (10.20.30.40)" in err.value.message
    assert no_connections == []


def mock_network(routes: dict[str, httpx.Response], requests: list) -> httpx.MockTransport:
    """A stand-in for the internet: answers by host, records every request it was sent."""
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return routes[request.headers["host"]]

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("scheme, location, words", [
    ("http", "file:///etc/passwd", "only redirects to http(s) URLs"),
    ("http", "http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a loopback, private"),
    ("http", "http://internal.example/admin", "internal.example (10.0.0.7)"),
    ("https", "http://images.example/x.png", "only redirects to http(s) URLs (and never from https to http)"),
])
def test_redirects_are_checked_like_the_first_url(monkeypatch, no_connections, scheme, location, words):
    public = {"images.example": "93.184.216.34", "internal.example": "10.0.0.7"}
    monkeypatch.setattr(media, "resolve", lambda host, port: [public[host]])
    requests = []
    network = mock_network({"images.example": httpx.Response(302, headers={"Location": location})}, requests)
    with pytest.raises(APIError) as err:
        media.fetch(f"{scheme}://images.example/x.png", PARAM, public_only(), transport=network)
    assert err.value.code in ("image_fetch_failed", "image_host_not_allowed") and words in err.value.message
    assert [r.url.host for r in requests] == ["93.184.216.34"]  # the pinned address; nothing after the redirect
    assert requests[0].extensions["sni_hostname"] == "images.example"


def test_remote_image_over_the_size_cap_is_refused(monkeypatch, no_connections):
    monkeypatch.setattr(media, "resolve", lambda host, port: ["93.184.216.34"])
    limits = public_only(max_body_bytes=1000)

    async def body():
        for _ in range(4):
            yield b"x" * 600

    network = mock_network({"images.example": httpx.Response(200, content=body())}, [])
    with pytest.raises(APIError) as err:
        media.fetch("http://images.example/big.png", PARAM, limits, transport=network)
    assert err.value.code == "image_too_large"
