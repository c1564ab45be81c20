"""Images and audio inside chat requests -> PIL images and 16 kHz waveforms, checked.

Only three sources are read: `data:` URLs, base64 `input_audio`, and (only when the server
allows it) http(s) URLs. Strings that look like local paths are refused, never opened: a
request must not be able to make the server read its own files. For the same reason a remote
image comes only from a public address unless the operator allows private ones: otherwise a
request could make the server fetch from its own network (cloud metadata, admin pages).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from omnilm.data.audio import SAMPLING_RATE, load_audio
from omnilm.data.images import load_image
from omnilm.errors import MediaError
from omnilm.serve.errors import APIError, bad_request
from omnilm.serve.limits import Limits

# input_audio.format values OpenAI documents plus what libsndfile also decodes.
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "opus")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 3
_RESOLVERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="omnilm-resolve")


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
        return load_image(data, name=param, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side)
    except MediaError as err:
        raise bad_request(str(err), param, "invalid_image") from None


def fetch(url: str, param: str, limits: Limits, transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """GET an image under one deadline for the whole exchange (connect, redirects, every byte) and a
    size cap; any failure is the request's 400. Runs in a request worker thread, never the engine's.
    `transport` stands in for the network in tests."""
    if not limits.fetch_slots.acquire(blocking=False):
        raise APIError(503, f"{param}: the server is already fetching {limits.max_remote_fetches} remote images; "
                       "retry shortly or send the image inline as a data: URL", param=param, code="server_busy")
    try:
        # A fresh event loop in this worker thread: asyncio's timeout cuts the fetch at the
        # deadline even while a server trickles bytes, which per-read socket timeouts never do.
        return asyncio.run(asyncio.wait_for(_fetch(url, param, limits, transport), limits.remote_timeout_s))
    except TimeoutError:
        raise bad_request(f"{param}: fetching {url} took longer than {limits.remote_timeout_s:g} s", param,
                          "image_fetch_timeout") from None
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise bad_request(f"{param}: cannot fetch {url}: {err}", param, "image_fetch_failed") from None
    finally:
        limits.fetch_slots.release()


async def _fetch(url: str, param: str, limits: Limits, transport: httpx.AsyncBaseTransport | None) -> bytes:
    # trust_env=False: no proxy from the environment between us and the address that was checked.
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=limits.remote_timeout_s,
                                 transport=transport) as client:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = client.build_request("GET", await _pinned(target, param, limits),
                                           headers={"Host": target.netloc.decode("ascii")},
                                           extensions={"sni_hostname": target.raw_host.decode("ascii")})
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    target = _redirect_target(target, response.headers["location"], param)
                    continue
                if response.status_code != 200:
                    raise bad_request(f"{param}: fetching {url} returned HTTP {response.status_code}", param,
                                      "image_fetch_failed")
                return await _read_capped(response, url, param, limits.max_body_bytes)
            finally:
                await response.aclose()
    raise bad_request(f"{param}: {url} redirects more than {MAX_REDIRECTS} times", param, "image_fetch_failed")


async def _pinned(url: httpx.URL, param: str, limits: Limits) -> httpx.URL:
    """`url` with its host replaced by the one address that was resolved and checked.

    Connecting to that address (not resolving the name again) keeps a name that resolves to a
    public address for the check and to a private one for the connection (DNS rebinding) out;
    the Host header and TLS server name stay the original host's.
    """
    host = url.raw_host.decode("ascii")
    if not host:
        raise bad_request(f"{param}: {url} has no host", param, "invalid_image_url")
    addresses = [host] if _is_ip(host) else await _resolve_in_background(host, url.port or DEFAULT_PORTS[url.scheme],
                                                                        param)
    for address in addresses:
        _check_address(address, host, param, limits)
    return url.copy_with(host=addresses[0])


async def _resolve_in_background(host: str, port: int, param: str) -> list[str]:
    # Our own threads, not the event loop's: asyncio.run() waits for its executor's threads at
    # exit, so a resolver stuck past the deadline would hold the request beyond it.
    try:
        return await asyncio.get_running_loop().run_in_executor(_RESOLVERS, resolve, host, port)
    except OSError as err:
        raise bad_request(f"{param}: cannot resolve {host}: {err}", param, "image_fetch_failed") from None


def resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_address(address: str, host: str, param: str, limits: Limits) -> None:
    if limits.allow_private_image_hosts:
        return
    ip = ipaddress.ip_address(address)
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1
    if not ip.is_global or ip.is_multicast:
        shown = host if host == address else f"{host} ({address})"
        raise bad_request(f"{param}: {shown} is a loopback, private, link-local, reserved or multicast address; "
                          "this server fetches images only from public addresses (an operator can allow others "
                          "with --allow-private-image-hosts)", param, "image_host_not_allowed")


def _redirect_target(current: httpx.URL, location: str, param: str) -> httpx.URL:
    target = current.join(location)
    if target.scheme not in DEFAULT_PORTS or (current.scheme == "https" and target.scheme == "http"):
        raise bad_request(f"{param}: {current} redirects to {target}; only redirects to http(s) URLs (and never "
                          "from https to http) are followed", param, "image_fetch_failed")
    return target


async def _read_capped(response: httpx.Response, url: str, param: str, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(url, param, limit)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(url, param, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, param: str, limit: int):
    return bad_request(f"{param}: {url} is larger than {limit} bytes", param, "image_too_large")


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
