"""What one request may ask of the server. Every limit turns into a clear 4xx, never a crash."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024  # whole JSON body, base64 media included
    max_image_pixels: int = 16_000_000  # checked from the header before decoding (decompression bombs)
    max_images: int = 8  # per request, all turns together
    max_audio_seconds: float = 60.0  # also capped by the model's own audio max_seconds
    max_audios: int = 4
    max_prompt_tokens: int | None = None  # None: the model's context window decides
    max_new_tokens: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when the request gives none (shortened to fit the context)
    allow_remote_images: bool = False  # fetch http(s) image URLs (the server makes outbound requests)
    remote_timeout_s: float = 10.0
    max_queue: int = 256  # waiting requests; more get 503 instead of unbounded memory
    max_batch_size: int = 8
