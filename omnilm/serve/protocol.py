"""OpenAI chat-completions JSON -> a checked request; and the response / chunk JSON back.

Parsing is explicit (no pydantic models) so each refusal can name the exact field
(`messages[2].content[0].image_url.url`) the way OpenAI's own errors do.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from omnilm.data.sample import AUDIO_TOKEN, IMAGE_TOKEN, MEDIA_TOKENS, Message, Sample
from omnilm.generate import GenerationConfig
from omnilm.serve.errors import bad_request
from omnilm.serve.limits import Limits
from omnilm.serve.media import SAMPLING_RATE, read_image_url, read_input_audio

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Accepted only at their "off" value: silently ignoring them would give the caller wrong results.
UNSUPPORTED = {"tools": None, "functions": None, "tool_choice": ("none",), "function_call": ("none",),
               "logprobs": (False,), "top_logprobs": (0,), "audio": None, "prediction": None}
MAX_STOP = 4


@dataclass
class AudioClip:
    wave: np.ndarray  # [N] float32 at 16 kHz


@dataclass
class Turn:
    role: str
    parts: list = field(default_factory=list)  # str | PIL.Image | AudioClip, in order


@dataclass
class ChatRequest:
    model: str
    turns: list[Turn]
    config: GenerationConfig
    max_tokens_given: bool  # False: the server picks a length that fits the context
    stream: bool = False
    include_usage: bool = False

    def audio_clips(self) -> list[AudioClip]:
        return [p for t in self.turns for p in t.parts if isinstance(p, AudioClip)]


def parse_chat_request(body, limits: Limits, audio_max_seconds: float) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required (see GET /v1/models)", "model")
    for name, allowed in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value != [] and (allowed is None or value not in allowed):
            raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", "n", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad_request("only response_format {'type': 'text'} is supported", "response_format",
                          "unsupported_parameter")
    turns = parse_messages(body.get("messages"), limits, audio_max_seconds)
    config, given = generation_config(body, limits)
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = bool(options.get("include_usage", False))
    return ChatRequest(model, turns, config, given, stream, include_usage)


def parse_messages(messages, limits: Limits, audio_max_seconds: float) -> list[Turn]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    turns = [parse_message(m, f"messages[{i}]", limits, audio_max_seconds) for i, m in enumerate(messages)]
    if turns[-1].role != "user":
        raise bad_request("the last message must come from the user", f"messages[{len(turns) - 1}].role")
    images = sum(isinstance(p, Image.Image) for t in turns for p in t.parts)
    audios = sum(isinstance(p, AudioClip) for t in turns for p in t.parts)
    if images > limits.max_images:
        raise bad_request(f"{images} images in the request; the limit is {limits.max_images}", "messages",
                          "too_many_images")
    if audios > limits.max_audios:
        raise bad_request(f"{audios} audio inputs in the request; the limit is {limits.max_audios}", "messages",
                          "too_many_audios")
    return turns


def parse_message(message, param: str, limits: Limits, audio_max_seconds: float) -> Turn:
    if not isinstance(message, dict):
        raise bad_request(f"{param} must be an object with 'role' and 'content'", param)
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(f"{param}.role {role!r} is not supported; use system, user or assistant", f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return Turn(ROLES[role], [_text(content, f"{param}.content")])
    if not isinstance(content, list) or not content:
        raise bad_request(f"{param}.content must be a string or a non-empty list of parts", f"{param}.content")
    parts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(_text(part.get("text"), f"{where}.text"))
        elif kind in ("image_url", "input_audio") and role != "user":
            raise bad_request(f"{where}: only user messages may carry {kind}", f"{where}.type")
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            parts.append(read_image_url(url, f"{where}.image_url.url", limits))
        elif kind == "input_audio":
            seconds = min(limits.max_audio_seconds, audio_max_seconds)
            parts.append(AudioClip(read_input_audio(part.get("input_audio"), f"{where}.input_audio", limits, seconds)))
        else:
            raise bad_request(f"{where}.type {kind!r} is not supported; use text, image_url or input_audio",
                              f"{where}.type")
    return Turn(ROLES[role], parts)


def _text(value, param: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string", param)
    for token in MEDIA_TOKENS.values():
        # The markers are how media enters the prompt; typed ones would shift every image.
        if token in value:
            raise bad_request(f"{param} contains the reserved marker {token}; send media as image_url / "
                              "input_audio parts instead", param)
    return value


def generation_config(body: dict, limits: Limits) -> tuple[GenerationConfig, bool]:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _typed(body, key, int, None)
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_new_tokens:
        raise bad_request(f"{key} must be between 1 and {limits.max_new_tokens}, got {max_tokens}", key,
                          "invalid_value")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("top_p must be greater than 0", "top_p", "invalid_value")
    top_k = _typed(body, "top_k", int, 0)  # not OpenAI's, but vLLM-style clients send it
    if top_k < 0:
        raise bad_request("top_k must be >= 0 (0 = off)", "top_k", "invalid_value")
    repetition_penalty = _number(body, "repetition_penalty", 1.0, 0.0, 10.0)
    if repetition_penalty == 0.0:
        raise bad_request("repetition_penalty must be greater than 0", "repetition_penalty", "invalid_value")
    seed = _typed(body, "seed", int, None)
    config = GenerationConfig(max_new_tokens=max_tokens or limits.default_max_tokens, temperature=temperature,
                              top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                              stop=_stop(body.get("stop")), seed=seed)
    return config, max_tokens is not None


def _stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise bad_request(f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them", "stop")
    return list(stops)


def _typed(body: dict, key: str, kind: type, default):
    value = body.get(key)
    if value is None:
        return default
    # bool is an int in Python; `"max_tokens": true` is still a mistake.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"'{key}' must be {'an integer' if kind is int else 'a ' + kind.__name__}", key)
    return value


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"'{key}' must be a number between {low:g} and {high:g}, got {value!r}", key,
                          "invalid_value")
    return float(value)


def to_sample(turns: list[Turn]) -> Sample:
    """Parts become one string per message with media markers, media listed in marker order."""
    messages, images, audios = [], [], []
    for turn in turns:
        pieces = []
        for part in turn.parts:
            if isinstance(part, Image.Image):
                pieces.append(IMAGE_TOKEN)
                images.append(part)
            elif isinstance(part, AudioClip):
                pieces.append(AUDIO_TOKEN)
                audios.append((part.wave, SAMPLING_RATE))
            else:
                pieces.append(part)
        # "<image>\nquestion" is the LLaVA-style layout the data sources train on.
        messages.append(Message(turn.role, "\n".join(pieces)))
    return Sample(messages, images, audios)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                        completion_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          usage_: dict | None = None, choices: bool = True) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [choice] if choices else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out
