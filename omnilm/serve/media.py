"""Images and audio inside chat requests -> PIL images and 16 kHz waveforms, checked.

Only three sources are read: `data:` URLs, base64 `input_audio`, and (only when the server
allows it) http(s) URLs. Strings that look like local paths are refused, never opened: a
request must not be able to make the server read its own files.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np
from PIL import Image

from omnilm.data.audio import load_audio
from omnilm.data.images import load_image
from omnilm.errors import MediaError
from omnilm.serve.errors import bad_request
from omnilm.serve.limits import Limits

SAMPLING_RATE = 16000
# input_audio.format values OpenAI documents plus what libsndfile also decodes.
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "opus")


def decode_base64(text: str, param: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{param} is not valid base64 ({err})", param, "invalid_base64") from None
    if not data:
        raise bad_request(f"{param} is empty", param, "invalid_base64")
    return data


def parse_data_url(url: str, param: str) -> tuple[str, bytes]:
    """`data:<mime>;base64,<payload>` -> (mime, bytes)."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise bad_request(f"{param}: a data: URL needs a comma before its payload", param, "invalid_image_url")
    meta = head[len("data:"):].split(";")
    if "base64" not in meta[1:]:
        raise bad_request(f"{param}: only base64 data: URLs are supported (data:image/png;base64,...)",
                          param, "invalid_image_url")
    return meta[0], decode_base64(payload, param)


def read_image_url(url, param: str, limits: Limits) -> Image.Image:
    if not isinstance(url, str) or not url:
        raise bad_request(f"{param} must be a non-empty string", param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        _, data = parse_data_url(url, param)
    elif scheme in ("http", "https"):
        if not limits.allow_remote_images:
            raise bad_request(f"{param}: remote image URLs are disabled on this server; send the image inline as "
                              "a data: URL (or start the server with --allow-remote-images)", param,
                              "remote_images_disabled")
        data = fetch(url, param, limits)
    else:
        raise bad_request(f"{param} must be a data: URL (data:image/png;base64,...)"
                          f"{' or an http(s) URL' if limits.allow_remote_images else ''}; "
                          "local file paths are never read", param, "invalid_image_url")
    try:
        return load_image(data, name=param, max_pixels=limits.max_image_pixels)
    except MediaError as err:
        raise bad_request(f"{err} (send PNG, JPEG, WebP, GIF or BMP bytes)", param, "invalid_image") from None


def fetch(url: str, param: str, limits: Limits) -> bytes:
    """GET an image with a timeout and a size cap; any failure is the request's 400."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=limits.remote_timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise bad_request(f"{param}: fetching {url} returned HTTP {response.status_code}", param,
                                  "image_fetch_failed")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise bad_request(f"{param}: {url} is larger than {limits.max_body_bytes} bytes", param,
                                      "image_too_large")
                chunks.append(chunk)
    except httpx.HTTPError as err:
        raise bad_request(f"{param}: cannot fetch {url}: {err}", param, "image_fetch_failed") from None
    return b"".join(chunks)


def read_input_audio(audio, param: str, limits: Limits, max_seconds: float) -> np.ndarray:
    """OpenAI's `input_audio` part ({"data": base64, "format": "wav"}) -> float32 16 kHz mono."""
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise bad_request(f"{param} must be an object with base64 'data' and a 'format'", param)
    fmt = audio.get("format")
    if fmt not in AUDIO_FORMATS:
        raise bad_request(f"{param}.format {fmt!r} is not supported; use one of {', '.join(AUDIO_FORMATS)}",
                          f"{param}.format", "unsupported_audio_format")
    data = decode_base64(audio["data"], f"{param}.data")
    try:
        return load_audio(data, sampling_rate=SAMPLING_RATE, max_seconds=max_seconds, name=f"{param} ({fmt})")
    except MediaError as err:
        raise bad_request(str(err), f"{param}.data", "invalid_audio") from None
