"""Hostile requests over HTTP on 127.0.0.1: each malformed body is a 400 in OpenAI's error shape
(never a 500), text a user types stays text, and an oversized body gets its 413 even from a
client that sends the whole body before it reads the answer."""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import httpx
import pytest
from test_serve_support import free_port, running_server, write_tiny_model

from omnilm.core.sample import Message, Sample
from omnilm.serve.api import create_app
from tests.conftest import SERVED_NAME as MODEL

EOS_TEXT = "<|endoftext|>"  # the tiny byte tokenizer's EOS, id 256



def body(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
            **fields}


def post(server: str, payload) -> httpx.Response:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(server + "/v1/chat/completions", content=raw, timeout=60,
                      headers={"Content-Type": "application/json"})


def raw_body(extra: bytes) -> bytes:
    """A valid body with `extra` spliced in as the value of one more field (JSON json.dumps cannot write)."""
    return json.dumps(body())[:-1].encode() + b', "x": ' + extra + b"}"


DEEP = raw_body(b"[" * 100_000 + b"]" * 100_000)
LONE_SURROGATE = b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}'

# (body, the `param` the 400 must name, words its message must contain)
MALFORMED = [
    (DEEP, None, "not valid JSON"),
    (LONE_SURROGATE, None, "not valid JSON"),
    (body(seed=2**70), "seed", "less than or equal"),
    (body(seed=-(2**70)), "seed", "greater than or equal"),
    (body(temperature=3), "temperature", "less than or equal to 2"),
    (body(temperature=-0.5), "temperature", "greater than or equal to 0"),
    (json.dumps(body()).replace('"temperature": 0', '"temperature": NaN').encode(), "temperature", "finite"),
    (json.dumps(body()).replace('"temperature": 0', '"temperature": 1e400').encode(), "temperature", "finite"),
    (body(temperature="hot"), "temperature", "number"),
    (body(top_p=0), "top_p", "greater than 0"),
    (body(top_k=2**70), "top_k", "less than or equal"),
    (body(top_k=-1), "top_k", "greater than or equal to 0"),
    (body(repetition_penalty=1e300), "repetition_penalty", "less than or equal"),
    (body(max_tokens=2**70), "max_tokens", "between 1 and 200"),
    (body(max_tokens=4.5), "max_tokens", "integer"),
    (body(max_tokens=True), "max_tokens", "integer"),
    (body(max_completion_tokens=0), "max_completion_tokens", "between 1 and 200"),
    (body(n=2**70), "n", "only 1 is supported"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (body(stop="x" * 10_000), "stop", "at most"),
    (body(stop=[""]), "stop[0]", "at least 1"),
    (body(stop=[1]), "stop[0]", "string"),
    (body(stream="yes"), "stream", "boolean"),
    (body(stream_options={"include_usage": "yes"}), "stream_options.include_usage", "boolean"),
    (body(model=5), "model", "string"),
    (body(messages=[{"role": "user", "content": "hi"}] * 10_000), "messages", "at most"),
    (body(messages=[{"role": "user", "content": []}]), "messages[0].content", "at least 1"),
    (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text", "required"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]),
     "messages[0].content[0].image_url.url", "required"),
    (body(messages=[{"role": "user", "content": [{"type": "video_url"}]}]), "messages[0].content[0].type",
     "not supported"),
    (body(messages=[{"role": "user", "content": ["hi"]}]), "messages[0].content[0].type", "must be an object"),
    (body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "'user'"),
    (body(messages=[{"role": "user", "content": None}]), "messages[0].content", "string or a non-empty list"),
    (body(response_format={"type": "json_object"}), "response_format", "only {'type': 'text'}"),
    (body(tool_choice="auto"), "tool_choice", "not supported"),
]


@pytest.mark.parametrize("payload, param, words", MALFORMED,
                         ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(MALFORMED)])
def test_malformed_bodies_are_400s_in_openai_shape(server, payload, param, words):
    response = post(server, payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert words in error["message"], error
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_error_names_the_value_it_refused(server):
    error = post(server, body(temperature=7.5)).json()["error"]
    assert error["code"] == "invalid_value" and "got 7.5" in error["message"]


def test_a_tiny_temperature_samples_greedily(server):
    """1e-45 is inside OpenAI's [0, 2], but dividing logits by it overflows: it means greedy (as in vLLM)."""
    tiny = post(server, body(temperature=1e-45, max_tokens=8))
    assert tiny.status_code == 200, tiny.text
    greedy = post(server, body(temperature=0, max_tokens=8))
    assert tiny.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]


def test_extreme_seeds_inside_the_int64_range_still_answer(server):
    for seed in (2**63 - 1, -(2**63)):
        response = post(server, body(seed=seed, temperature=1.0))
        assert response.status_code == 200, response.text


def test_empty_prompt_is_a_400(server):
    """The tiny model's 'caption' template adds no text: empty content renders to zero tokens."""
    response = post(server, body(messages=[{"role": "user", "content": ""}]))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and "empty" in error["message"]


def test_valid_optional_fields_and_nulls_still_work(server):
    """What OpenAI clients send besides the basics: nulls, extra fields, names, off-values of unsupported options."""
    response = post(server, body(messages=[{"role": "system", "content": "Be brief.", "name": "rules"},
                                           {"role": "developer", "content": [{"type": "text", "text": "Short."}]},
                                           {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                 top_p=None, seed=None, stop="\n", n=1, stream=False, tools=[], tool_choice="none",
                                 logprobs=False, response_format={"type": "text"}, user="someone",
                                 presence_penalty=0.0, max_completion_tokens=5))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 5


# ---- special tokens typed by a user ----

def test_typed_special_tokens_reach_the_model_as_text(server, engine):
    response = post(server, body(messages=[{"role": "user", "content": EOS_TEXT}]))
    assert response.status_code == 200, response.text
    # 13 byte tokens, not the single EOS id 256.
    assert response.json()["usage"]["prompt_tokens"] == len(EOS_TEXT.encode())
    processor = engine.processor
    ids = processor.encode_prompt(Sample([Message("user", f"stop {EOS_TEXT} here")])).input_ids.tolist()
    assert processor.tokenizer.eos_token_id not in ids
    assert processor.decode(ids) == f"stop {EOS_TEXT} here"


def test_operators_can_opt_in_to_special_tokens_in_text(engine):
    from copy import copy

    processor = copy(engine.processor)
    processor.allow_special_tokens = True
    ids = processor.encode_prompt(Sample([Message("user", f"stop {EOS_TEXT} here")])).input_ids.tolist()
    assert ids.count(processor.tokenizer.eos_token_id) == 1


# ---- bodies over the size limit ----

def _oversized(size: int) -> bytes:
    head = b'{"model": "tiny", "messages": [{"role": "user", "content": "'
    return head + b"x" * (size - len(head) - 4) + b'"}]}'


def test_oversized_body_gets_its_413_from_a_client_that_sends_everything_first(server):
    """urllib writes the whole 32 MB before it reads a byte: the server must not hang up on it."""
    request = urllib.request.Request(server + "/v1/chat/completions", data=_oversized(32 * 1024 * 1024),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    assert json.loads(err.value.read())["error"]["code"] == "request_too_large"
    assert httpx.get(server + "/health").status_code == 200


def test_oversized_chunked_body_gets_its_413(server):
    """No Content-Length: the limit is found while reading, and the rest is drained before answering."""
    port = int(server.rsplit(":", 1)[1])
    chunk = b"x" * (1024 * 1024)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", body=iter([b'{"x": "'] + [chunk] * 24 + [b'"}']),
                           headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "request_too_large"
    finally:
        connection.close()


def test_serve_flag_lets_operators_opt_in(tmp_path):
    from omnilm.cli import build_parser
    from omnilm.serve.server import load_state

    args = build_parser().parse_args(["serve", "--model", "m", "--allow-special-tokens"])
    assert args.allow_special_tokens and not build_parser().parse_args(["serve", "--model", "m"]).allow_special_tokens
    state = load_state(str(write_tiny_model(tmp_path / "model")), allow_special_tokens=True)
    try:
        with running_server(create_app(state), free_port()) as url:
            response = post(url, body(model=state.model_name, messages=[{"role": "user", "content": EOS_TEXT}]))
        assert response.json()["usage"]["prompt_tokens"] == 1  # the EOS id itself
    finally:
        state.engine.close()


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending(server):
    import socket

    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 67108864\r\nExpect: 100-continue\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
