"""OpenAI chat-completions JSON -> a checked request; and the response / chunk JSON back.

The raw body is parsed and checked in one step by typed pydantic models (ChatCompletionRequest):
jiter refuses invalid JSON, lone surrogates and nesting deeper than 200 levels; every number has
its bounds and must be finite; strings and lists have length caps. A refusal is a 400 that names
its field the way OpenAI's errors do (`messages[2].content[0].image_url.url`). Media are decoded
afterwards (to_chat_request), off the event loop.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      ValidationInfo, field_validator)
from pydantic_core import PydanticCustomError

from omnilm.core.sample import AUDIO_TOKEN, IMAGE_TOKEN, Message, Sample
from omnilm.data.markers import join_parts, reserved_marker
from omnilm.generation_settings import MAX_STOP_CHARS, GenerationSettings, bounds_of
from omnilm.serve.errors import APIError, bad_request
from omnilm.serve.limits import Limits
from omnilm.serve.media import SAMPLING_RATE, read_image_url, read_input_audio

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
PART_TYPES = ("text", "image_url", "input_audio")
# Accepted only at their "off" value (or null / []): silently ignoring them would give the caller wrong results.
OFF_ONLY = {"n": (1,), "response_format": ({"type": "text"},), "tools": (), "functions": (), "tool_choice": ("none",),
            "function_call": ("none",), "logprobs": (False,), "top_logprobs": (0,), "audio": (), "prediction": ()}
ONLY = {"n": "only 1 is supported", "response_format": "only {'type': 'text'} is supported"}
MAX_MESSAGES = 512  # the chat template renders prefix by prefix: cost grows with the square of this
MAX_PARTS = 64  # content parts in one message
MAX_STOP = 4
MAX_MODEL_NAME = 256
GREEDY_BELOW = 1e-5  # as vLLM: logits / 1e-45 overflow to inf; such temperatures mean "greedy"


def _json_kind(value) -> str | None:
    """The tag of a field that may be a string or a list (or object): picks the member to validate."""
    return "<string>" if isinstance(value, str) else "<list>" if isinstance(value, list) else \
        "<object>" if isinstance(value, dict) else None


def _part_kind(value) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    return f"<{kind}>" if kind in PART_TYPES else None


def _no_media_markers(text: str) -> str:
    # The markers are how media enters the prompt; typed ones would shift every image.
    if token := reserved_marker(text):
        raise PydanticCustomError("reserved_marker", "contains the reserved marker {token}; send media as "
                                  "image_url / input_audio parts instead", {"token": token})
    return text


# Union members are tagged <like-this>; `param_path` leaves the tags out of the field path.
UserText = Annotated[str, AfterValidator(_no_media_markers)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class _Strict(BaseModel):
    # strict: "5" is not a number and 1 is not true; unknown fields are ignored, as OpenAI clients send many.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: UserText


class ImageURL(_Strict):
    url: str  # checked (and decoded) by omnilm.serve.media


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: Annotated[Annotated[ImageURL, Tag("<object>")] | Annotated[str, Tag("<string>")],
                         Discriminator(_json_kind, custom_error_type="invalid_type",
                                       custom_error_message="must be an object with a 'url' string")]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class InputAudio(_Strict):
    data: str  # base64; format and contents are checked by omnilm.serve.media
    format: str


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[Annotated[TextPart, Tag("<text>")] | Annotated[ImagePart, Tag("<image_url>")]
                 | Annotated[AudioPart, Tag("<input_audio>")],
                 Discriminator(_part_kind, custom_error_type="unsupported_part",
                               custom_error_message="unsupported content part")]
Content = Annotated[Annotated[UserText, Tag("<string>")]
                    | Annotated[list[Part], Field(min_length=1, max_length=MAX_PARTS), Tag("<list>")],
                    Discriminator(_json_kind, custom_error_type="invalid_type",
                                  custom_error_message="must be a string or a non-empty list of parts")]
Stop = Annotated[Annotated[StopText, Tag("<string>")]
                 | Annotated[list[StopText], Field(max_length=MAX_STOP), Tag("<list>")],
                 Discriminator(_json_kind, custom_error_type="invalid_type",
                               custom_error_message=f"must be a non-empty string or a list of up to {MAX_STOP}")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatCompletionRequest(_Strict):
    """The fields this server reads, each with its type and bounds; anything else is ignored."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = None  # bounds come from the server's Limits (validation context)
    max_completion_tokens: int | None = None
    # the bounds are GenerationSettings' own (omnilm.generation_settings)
    temperature: float | None = Field(None, **bounds_of("temperature"))
    top_p: float | None = Field(None, **bounds_of("top_p"))
    top_k: int | None = Field(None, **bounds_of("top_k"))  # not OpenAI's, but vLLM-style clients send it
    repetition_penalty: float | None = Field(None, **bounds_of("repetition_penalty"))
    seed: int | None = Field(None, **bounds_of("seed"))
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Any = None
    response_format: Any = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    audio: Any = None
    prediction: Any = None

    @field_validator(*OFF_ONLY)
    @classmethod
    def _off_only(cls, value, info: ValidationInfo):
        if value is not None and value != [] and value not in OFF_ONLY[info.field_name]:
            message = ONLY.get(info.field_name, "not supported by this server")
            raise PydanticCustomError("unsupported_parameter", message)
        return value

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _within_limit(cls, value, info: ValidationInfo):
        limit = info.context["limits"].max_new_tokens
        if value is not None and not 1 <= value <= limit:
            raise PydanticCustomError("invalid_value", "must be between 1 and {limit}, got {value}",
                                      {"limit": limit, "value": value})
        return value


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
    config: GenerationSettings
    max_tokens_given: bool  # False: the server picks a length that fits the context
    stream: bool = False
    include_usage: bool = False

    def audio_clips(self) -> list[AudioClip]:
        return [p for t in self.turns for p in t.parts if isinstance(p, AudioClip)]


def parse_request(raw: bytes, limits: Limits) -> ChatCompletionRequest:
    """The raw body -> a typed request, or the 400 that says what is wrong and where."""
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate_json(raw, context={"limits": limits})
    except ValidationError as err:
        raise refusal(err) from None


def refusal(err: ValidationError) -> APIError:
    """The first problem pydantic found, in OpenAI's terms (param = the field's path)."""
    problems = err.errors(include_url=False)
    first = problems[0]
    kind, param = first["type"], param_path(first["loc"])
    if kind == "json_invalid":
        problem = first["ctx"]["error"]
        hint = next((h for words, h in JSON_HINTS.items() if words in problem), "")
        return bad_request(f"the request body is not valid JSON: {problem}{hint}", code="invalid_json")
    message = first["msg"]
    if kind == "unsupported_part":
        given = first["input"]
        param = f"{param}.type"
        message = (f"type {given.get('type')!r} is not supported" if isinstance(given, dict) else
                   "a content part must be an object with a 'type'") + f"; use {', '.join(PART_TYPES)}"
    elif kind in BUILT_IN_WITH_INPUT and _is_scalar(first["input"]):
        message += f" (got {_short(first['input'])})"
    more = f" ({len(problems) - 1} more problem{'s' * (len(problems) > 2)} after this one)" if len(problems) > 1 else ""
    code = "invalid_value" if kind in RANGE_ERRORS else kind if kind in CUSTOM_CODES else None
    return bad_request(f"{param}: {message}{more}" if param else f"{message}{more}", param, code)


JSON_HINTS = {"recursion limit": " (nested too deeply)",
              "hex escape": " (a \\ud800-\\udfff escape must be half of a surrogate pair)"}
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
CUSTOM_CODES = {"invalid_value", "unsupported_parameter", "reserved_marker"}
# Built-in errors whose refused value helps the reader ("got 7.5"); lengths and missing fields say enough.
BUILT_IN_WITH_INPUT = RANGE_ERRORS | {"int_type", "float_type", "bool_type", "string_type", "literal_error",
                                      "invalid_type", "model_type"}


def param_path(loc: tuple) -> str | None:
    """('messages', 0, 'content', '<list>', 1, '<image_url>', 'image_url') -> messages[0].content[1].image_url"""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("<"):  # union tags are not fields
            path += f".{part}" if path else part
    return path or None


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def to_chat_request(request: ChatCompletionRequest, limits: Limits, audio_max_seconds: float) -> ChatRequest:
    """Decode the media and check what spans messages (roles, counts). CPU work: run it off the event loop."""
    seconds = min(limits.max_audio_seconds, audio_max_seconds)
    turns = [to_turn(m, f"messages[{i}]", limits, seconds) for i, m in enumerate(request.messages)]
    if turns[-1].role != "user":
        raise bad_request("the last message must come from the user", f"messages[{len(turns) - 1}].role")
    images = sum(isinstance(p, Image.Image) for t in turns for p in t.parts)
    audios = sum(isinstance(p, AudioClip) for t in turns for p in t.parts)
    if images > limits.max_images:
        raise bad_request(f"{images} images in the request (all turns together); the limit is "
                          f"{limits.max_images} images per request", "messages",
                          "too_many_images")
    if audios > limits.max_audios:
        raise bad_request(f"{audios} audio inputs in the request (all turns together); the limit "
                          f"is {limits.max_audios} per request", "messages",
                          "too_many_audios")
    options = request.stream_options or StreamOptions()
    return ChatRequest(request.model, turns, generation_config(request, limits), _max_tokens(request) is not None,
                       bool(request.stream), bool(options.include_usage))


def to_turn(message: ChatMessage, param: str, limits: Limits, audio_seconds: float) -> Turn:
    role = ROLES[message.role]
    if isinstance(message.content, str):
        return Turn(role, [message.content])
    parts = []
    for j, part in enumerate(message.content):
        where = f"{param}.content[{j}]"
        if isinstance(part, TextPart):
            parts.append(part.text)
        elif role != "user":
            raise bad_request(f"{where}: only user messages may carry {part.type}", f"{where}.type")
        elif isinstance(part, ImagePart):
            parts.append(read_image_url(part.url, f"{where}.image_url.url", limits))
        else:
            clip = read_input_audio(part.input_audio.model_dump(), f"{where}.input_audio", limits, audio_seconds)
            parts.append(AudioClip(clip))
    return Turn(role, parts)


def _max_tokens(request: ChatCompletionRequest) -> int | None:
    given = request.max_completion_tokens
    return given if given is not None else request.max_tokens


def generation_config(request: ChatCompletionRequest, limits: Limits) -> GenerationSettings:
    temperature = _or(request.temperature, 1.0)
    stop = request.stop or []
    return GenerationSettings(max_new_tokens=_max_tokens(request) or limits.default_max_tokens,
                            temperature=0.0 if temperature < GREEDY_BELOW else temperature,
                            top_p=_or(request.top_p, 1.0), top_k=_or(request.top_k, 0),
                            repetition_penalty=_or(request.repetition_penalty, 1.0),
                            stop=[stop] if isinstance(stop, str) else list(stop), seed=request.seed)


def _or(value, default):
    """OpenAI clients send null for "not set"."""
    return default if value is None else value


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
        messages.append(Message(turn.role, join_parts(pieces)))
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
