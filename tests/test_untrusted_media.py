"""Images and audio from clients and data sets: only the accepted image formats are ever decoded
(no other Pillow plugin is even asked), and every refusal says what was wrong in one line with no
object repr, placeholder or server path. Servers listen on 127.0.0.1 only."""
from __future__ import annotations

import base64
import io
import os
import struct

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from test_serve_support import data_url, free_port, png_bytes, running_server

from omnilm.data.audio import load_audio
from omnilm.data.images import IMAGE_FORMATS, load_image
from omnilm.core.sample import Message, Sample
from omnilm.errors import DataError, MediaError
from omnilm.serve.api import ServerState, create_app
from tests.conftest import SERVE_BODY_LIMIT
from tests.conftest import SERVED_NAME as MODEL

ACCEPTED = "PNG, JPEG, WebP, GIF, BMP"
FILE = {"_type": "gradio.FileData"}


def saved(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def psd_bytes() -> bytes:
    """A minimal 8x8 RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)  # version, channels, h, w, depth, RGB
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes(3 * 8 * 8)  # empty sections, raw planes


REFUSED = {"TIFF": saved("TIFF"), "EPS": saved("EPS"), "ICO": saved("ICO"), "PSD": psd_bytes()}


class OutsideTheAllowlist(Exception):
    """Raised by every Pillow plugin outside the allowlist, were it asked about a file."""


@pytest.fixture
def only_allowed_plugins(monkeypatch):
    """Every registered Pillow format outside the allowlist raises if its accept check or decoder runs."""
    Image.init()
    asked = []

    def forbidden(name):
        def call(*args, **kwargs):
            asked.append(name)
            raise OutsideTheAllowlist(name)
        return call

    for name in [n for n in Image.OPEN if n not in IMAGE_FORMATS]:
        monkeypatch.setitem(Image.OPEN, name, (forbidden(name), forbidden(name)))
    yield asked
    assert not asked, f"Pillow plugins outside the allowlist were asked: {asked}"


def clean(message: str) -> None:
    """A client-facing message: no object repr or address, no placeholder, no server path."""
    assert "object at 0x" not in message and "<_io" not in message, message
    assert "sample ?" not in message, message
    assert os.getcwd() not in message and "/tmp" not in message, message


# ---- the image-format allowlist ----

def test_the_allowlist_is_what_the_errors_name():
    assert list(IMAGE_FORMATS) == ["PNG", "JPEG", "WEBP", "GIF", "BMP"]
    assert ", ".join(IMAGE_FORMATS.values()) == ACCEPTED


@pytest.mark.parametrize("fmt", REFUSED)
def test_other_formats_are_refused_without_asking_their_plugin(fmt, only_allowed_plugins):
    with pytest.raises(MediaError) as err:
        load_image(REFUSED[fmt], name="upload")
    assert f"accepted: {ACCEPTED}" in str(err.value) and "upload" in str(err.value)
    clean(str(err.value))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_still_decode(fmt, only_allowed_plugins):
    assert load_image(saved(fmt)).size == (8, 8)


def test_a_file_path_is_decoded_with_the_same_allowlist(tmp_path, only_allowed_plugins):
    path = tmp_path / "scan.tif"
    path.write_bytes(REFUSED["TIFF"])
    with pytest.raises(MediaError, match=f"scan.tif.*accepted: {ACCEPTED}"):
        load_image(path)


def test_not_an_image_prints_no_object_repr():
    with pytest.raises(MediaError) as err:
        load_image(b"hello, not an image")
    clean(str(err.value))
    assert ACCEPTED in str(err.value)


@pytest.mark.parametrize("fmt", REFUSED)
def test_api_refuses_other_formats_with_a_400_naming_the_accepted_ones(server, fmt, only_allowed_plugins):
    content = [{"type": "image_url", "image_url": {"url": data_url(REFUSED[fmt], "image/" + fmt.lower())}},
               {"type": "text", "text": "what is this?"}]
    response = post(server, {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_image", error
    assert ACCEPTED in error["message"] and error["param"] == "messages[0].content[0].image_url.url"
    clean(error["message"])


def test_data_loading_names_the_row_and_the_accepted_formats(processor, tmp_path, only_allowed_plugins):
    path = tmp_path / "page.eps"
    path.write_bytes(REFUSED["EPS"])
    row = Sample([Message("user", "<image>\nWhat is it?"), Message("assistant", "a page")], [str(path)], id="row-17")
    with pytest.raises(DataError, match=f"sample row-17: .*page.eps.*accepted: {ACCEPTED}"):
        processor(row)


# ---- the web app ----

@pytest.fixture(scope="module")
def ui_server(engine):
    with running_server(create_app(ServerState(engine, MODEL), ui=True), free_port()) as url:
        yield url


def call_ui(client: httpx.Client, base: str, image=None) -> str:
    """One call of the app's `respond` through Gradio's HTTP API -> the event stream's text."""
    started = client.post(base + "/ui/gradio_api/call/respond", json={"data": ["What is this?", image, None, None, 4,
                                                                               0.0, []]})
    started.raise_for_status()
    return client.get(base + f"/ui/gradio_api/call/respond/{started.json()['event_id']}", timeout=60).text


@pytest.mark.parametrize("fmt", ["TIFF", "EPS"])
def test_web_app_refuses_other_formats_without_asking_their_plugin(ui_server, fmt, only_allowed_plugins):
    with httpx.Client() as client:
        uploaded = client.post(ui_server + "/ui/gradio_api/upload",
                               files={"files": (f"picture.{fmt.lower()}", REFUSED[fmt], "image/" + fmt.lower())})
        stream = call_ui(client, ui_server, {"path": uploaded.json()[0], "meta": FILE,
                                             "orig_name": f"picture.{fmt.lower()}"})
    assert "event: error" in stream and f"accepted: {ACCEPTED}" in stream, stream[-500:]
    clean(stream)


def test_web_app_still_reads_an_uploaded_png(ui_server, only_allowed_plugins):
    with httpx.Client() as client:
        uploaded = client.post(ui_server + "/ui/gradio_api/upload", files={"files": ("a.png", png_bytes(), "image/png")})
        stream = call_ui(client, ui_server, {"path": uploaded.json()[0], "meta": FILE, "orig_name": "a.png"})
    assert "event: complete" in stream, stream[-500:]


@pytest.mark.parametrize("path", ["secret.txt", "../../etc/passwd", os.path.join(os.getcwd(), "README.md")],
                         ids=["relative", "dot-dot", "absolute"])
def test_web_app_refusing_a_named_path_reveals_no_server_path(ui_server, path):
    with httpx.Client() as client:
        stream = call_ui(client, ui_server, {"path": path, "meta": FILE})
    assert "event: error" in stream and "not uploaded by a user" in stream, stream[-500:]
    clean(stream)
    assert "passwd" not in stream and "README" not in stream, stream[-500:]


# ---- error texts ----

def post(server: str, payload) -> httpx.Response:
    import json

    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(server + "/v1/chat/completions", content=raw, timeout=60,
                      headers={"Content-Type": "application/json"})


def test_an_oversized_text_body_is_not_blamed_on_images(server):
    text = "x" * (2 * SERVE_BODY_LIMIT)
    response = post(server, {"model": MODEL, "messages": [{"role": "user", "content": text}]})
    message = response.json()["error"]["message"]
    assert response.status_code == 413
    assert "request body" in message and f"limit of {SERVE_BODY_LIMIT} bytes" in message, message
    assert "text" in message and "audio" in message, message  # what else the body may hold


def test_an_hour_long_clip_is_refused_for_its_length_not_its_size(server):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(3600 * 8000, np.int16), 8000, format="FLAC")  # silence compresses to ~100 kB
    clip = {"data": base64.b64encode(buf.getvalue()).decode(), "format": "flac"}
    response = post(server, {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": clip}]}]})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "3600.0 s long" in message and "limit is 60 s" in message, message
    assert "image" not in message, message


def test_a_wav_declaring_no_data_says_so():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, np.int16), 16000, format="WAV")
    with pytest.raises(MediaError) as err:
        load_audio(buf.getvalue(), name="clip.wav")
    assert "clip.wav" in str(err.value) and "no audio data" in str(err.value), err.value
    assert "0 samples" not in str(err.value)


def test_a_request_has_no_placeholder_name(processor):
    """A server request is a Sample without an id: its errors say what is wrong, with no 'sample ?'."""
    request = Sample([Message("user", "<audio>\nwhat did I say?")], audios=[np.zeros(16000, np.float32)])
    with pytest.raises(DataError) as err:
        processor.encode_prompt(request)
    assert "audio input" in str(err.value) and "no audio encoder" in str(err.value)
    clean(str(err.value))


@pytest.fixture(scope="module")
def processor(engine):
    return engine.processor


@pytest.mark.parametrize("content", [[{"type": "video", "video": Image.new("RGB", (4, 4))}], Image.new("RGB", (4, 4)),
                                     [Image.new("RGB", (4, 4))]], ids=["unknown part", "not a list", "bare image"])
def test_a_malformed_data_row_is_described_without_reprs(content):
    from omnilm.config import DataConfig
    from omnilm.data.hf_source import RowConverter

    convert = RowConverter(DataConfig(source="hf", path="rows"), ["messages"])
    with pytest.raises(DataError) as err:
        convert({"messages": [{"role": "user", "content": content}]}, 0)
    assert "object at 0x" not in str(err.value) and "<PIL" not in str(err.value), err.value
