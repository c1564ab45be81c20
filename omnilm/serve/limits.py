"""What one request may ask of the server. Every limit turns into a clear 4xx, never a crash."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass
class Limits:
    max_body_bytes: int = 20 * MIB  # whole JSON body, base64 media included; also a fetched image
    # Both checked from the image's header before decoding (decompression bombs, 2,000,000 x 8 strips).
    max_image_pixels: int = 16_000_000
    max_image_side: int = 16_384
    max_images: int = 8  # per request, all turns together
    max_audio_seconds: float = 60.0  # also capped by the model's own audio max_seconds
    max_audios: int = 4
    max_prompt_tokens: int | None = None  # None: the model's context window decides
    max_new_tokens: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when the request gives none (shortened to fit the context)
    allow_remote_images: bool = False  # fetch http(s) image URLs (the server makes outbound requests)
    allow_private_image_hosts: bool = False  # ...also from loopback/private/link-local addresses
    remote_timeout_s: float = 10.0  # one deadline for a whole fetch: connect, redirects, every byte
    # Fetches run in the request thread pool; capping them keeps slow image hosts from taking
    # every thread (and with them every other request).
    max_remote_fetches: int = 8
    max_queue: int = 256  # waiting requests; more get 503 instead of unbounded memory
    max_batch_size: int = 8
    fetch_slots: threading.BoundedSemaphore = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.fetch_slots = threading.BoundedSemaphore(self.max_remote_fetches)
