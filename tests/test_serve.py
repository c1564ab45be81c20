"""The OpenAI-compatible server, driven by the real `openai` client over HTTP on 127.0.0.1."""
from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from test_serve_support import data_url, free_port, png_bytes, running_server, wav_bytes, write_tiny_model

from omnilm.model.saved import load_pretrained
from omnilm.serve.api import ServerState, create_app
from omnilm.serve.engine import Engine
from omnilm.serve.limits import Limits
from tests.conftest import SERVE_BODY_LIMIT as BODY_LIMIT, SERVED_NAME as MODEL

KEY = "sk-test-key"
GREEDY = {"temperature": 0, "max_tokens": 12}



@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, content, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          **{**GREEDY, **kwargs})


def image_part(data: bytes | None = None, url: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url or data_url(data or png_bytes())}}


def test_health_and_models(server, client):
    assert httpx.get(server + "/health").json()["status"] == "ok"
    assert [m.id for m in client.models.list()] == [MODEL]


def test_text_completion_with_usage(client, engine):
    out = chat(client, "Hello there")
    assert out.object == "chat.completion" and out.model == MODEL
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    expected_prompt = engine.processor.tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    assert out.usage.prompt_tokens == len(expected_prompt)
    assert 1 <= out.usage.completion_tokens <= GREEDY["max_tokens"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_image_as_data_url_and_in_earlier_turns(client):
    text_only = chat(client, [{"type": "text", "text": "What is this?"}])
    with_image = chat(client, [image_part(), {"type": "text", "text": "What is this?"}])
    # 16 patch tokens + the end-of-media token + the "\n" that follows the image marker.
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + 18
    history = [{"role": "user", "content": [image_part(), {"type": "text", "text": "What is this?"}]},
               {"role": "assistant", "content": "A red square."},
               {"role": "user", "content": [image_part(png_bytes((0, 0, 255))), {"type": "text", "text": "And this?"}]}]
    two = client.chat.completions.create(model=MODEL, messages=history, **GREEDY)
    assert two.usage.prompt_tokens > 2 * 17


def test_streaming_matches_non_streaming(client, server):
    content = [image_part(), {"type": "text", "text": "Describe it"}]
    whole = chat(client, content)
    pieces, usage, finish = [], None, None
    for event in chat(client, content, stream=True, stream_options={"include_usage": True}):
        assert event.object == "chat.completion.chunk"
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    raw = httpx.post(server + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, **GREEDY})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_audio_without_audio_encoder_is_a_clear_400(client):
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes()).decode(), "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, [audio, {"type": "text", "text": "What was said?"}])
    assert "no audio encoder" in err.value.body["message"]


def test_audio_with_an_audio_encoder(tmp_path):
    engine = Engine(*load_pretrained(write_tiny_model(tmp_path / "audio-model", audio=True))).start()
    try:
        with running_server(create_app(ServerState(engine, MODEL)), free_port()) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            audio = {"type": "input_audio",
                     "input_audio": {"data": base64.b64encode(wav_bytes(1.0)).decode(), "format": "wav"}}
            out = chat(client, [audio, {"type": "text", "text": "What was said?"}])
            text_only = chat(client, [{"type": "text", "text": "What was said?"}])
            assert out.usage.prompt_tokens > text_only.usage.prompt_tokens
            with pytest.raises(openai.BadRequestError) as err:
                bad = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio").decode(),
                                                              "format": "wav"}}
                chat(client, [bad])
            assert "cannot decode audio" in err.value.body["message"]
    finally:
        engine.close()


def test_api_key(engine):
    with running_server(create_app(ServerState(engine, MODEL, api_key=KEY)), free_port()) as url:
        assert httpx.get(url + "/health").status_code == 200  # health stays open for load balancers
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(url + "/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            chat(openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0), "hi")
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert chat(good, "hi").choices[0].message.content is not None


@pytest.mark.parametrize("content, param, words", [
    ([image_part(url="data:image/png;base64,!!notbase64!!")], "messages[0].content[0].image_url.url", "base64"),
    ([image_part(b"these bytes are not an image")], "messages[0].content[0].image_url.url", "cannot read image"),
    ([image_part(url="/etc/passwd")], "messages[0].content[0].image_url.url", "local file paths"),
    ([image_part(url="file:///etc/passwd")], "messages[0].content[0].image_url.url", "data: URL"),
    ([image_part(url="http://127.0.0.1:9/x.png")], "messages[0].content[0].image_url.url", "remote image URLs"),
    ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}}],
     "messages[0].content[0].input_audio.format", "not supported"),
    ([{"type": "video_url", "video_url": {"url": "x"}}], "messages[0].content[0].type", "not supported"),
    ("look at <image> this", "messages[0].content", "reserved marker"),
])
def test_bad_media_and_content(client, content, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, content)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and words in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"


def test_decompression_bomb_is_refused_before_decoding(client):
    huge = png_bytes(size=(5000, 5000))  # 25 M pixels, a small file: over the 16 M pixel limit
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, [image_part(huge)])
    assert "too large" in err.value.body["message"]


def test_unknown_model_and_unsupported_options(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found" and "tiny" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "hi", n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert err.value.body["param"] == "tools"


def test_too_many_tokens(client, engine):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "hi", max_tokens=100_000)
    assert err.value.body["param"] == "max_tokens" and "between 1 and 200" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "word " * 40, max_tokens=200)  # 200 + 200 tokens: over the 256-token context
    assert err.value.body["code"] == "context_length_exceeded"
    assert f"context is {engine.context} tokens" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "word " * 60)  # 300 prompt tokens alone
    assert err.value.body["code"] == "context_length_exceeded" and "300 tokens" in err.value.body["message"]
    out = chat(client, "word " * 45, max_tokens=None, temperature=0)  # no max_tokens: shortened to fit
    assert out.usage.total_tokens <= engine.context


def test_malformed_json_and_oversized_body(server):
    url = server + "/v1/chat/completions"
    bad = httpx.post(url, content=b'{"model": "tiny", "messages": [', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]})
    response = httpx.post(url, content=big.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "over" in response.json()["error"]["message"]
    assert httpx.get(server + "/nope").json()["error"]["message"].startswith("no route")


def test_load_32_concurrent_requests_match_one_by_one(server, client, engine):
    prompts = [[image_part(png_bytes((40 * i % 256, 80, 160)))] + [{"type": "text", "text": f"question {i}"}]
               if i % 2 else f"prompt number {i}" for i in range(32)]
    one_by_one = [chat(client, p).choices[0].message.content for p in prompts]
    batches_before = engine.stats["batches"]
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda p: chat(client, p).choices[0].message.content, prompts))
    elapsed = time.monotonic() - started
    assert together == one_by_one  # none lost, none mixed up, greedy batched == greedy alone
    assert engine.stats["batches"] - batches_before < 32  # requests really were batched
    assert engine.stats["largest_batch"] > 1
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": MODEL, "queued": 0}
    print(f"32 concurrent requests in {elapsed:.2f} s, largest batch {engine.stats['largest_batch']}")


def test_a_storm_of_bad_requests_leaves_the_server_healthy(server, client):
    url = server + "/v1/chat/completions"
    bodies = [b"", b"null", b"[]", b'{"model": "tiny"}', b'{"model": "tiny", "messages": "hi"}',
              b'{"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}',
              b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}',
              b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
              b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
              b'{"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}',
              b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [1]}',
              b"\xff\xfe\x00", b'{"model": "other", "messages": []}'] * 3
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: httpx.post(url, content=b, timeout=30), bodies))
    for body, response in zip(bodies, responses, strict=True):
        assert 400 <= response.status_code < 500, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server + "/health").status_code == 200
    assert chat(client, "still there?").choices[0].message.content is not None


def test_disconnected_stream_is_cancelled(server, engine):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "stream": True,
            "max_tokens": 200, "temperature": 0}
    cancelled_before = engine.stats["cancelled"]
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=30) as response:
        next(response.iter_lines())  # the first chunk arrived: generation is under way; now hang up
    deadline = time.monotonic() + 10
    while engine.load and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.load == 0
    assert httpx.get(server + "/health").status_code == 200
    assert engine.stats["cancelled"] == cancelled_before + 1


def test_transcription_route_puts_what_was_said_in_the_prompt(tmp_path):
    from omnilm.config import TranscriberConfig
    from omnilm.core.sample import Message, Sample
    from omnilm.data.speech import TRAIN_VOICE, synthesize
    from omnilm.generation_settings import GenerationSettings

    wav = synthesize(["What colour is the shape?"], TRAIN_VOICE, tmp_path / "speech", progress=False)[0]
    whisper = TranscriberConfig(backend="ctranslate2", name_or_path="zoo:whisper-tiny.en")
    model, processor = load_pretrained(write_tiny_model(tmp_path / "plain"), audio_route="transcribe",
                                       transcriber=whisper)
    engine = Engine(model, processor).start()
    try:
        handle = engine.stream(Sample([Message("user", "<audio>")], audios=[wav]), GenerationSettings(max_new_tokens=2))
        heard = handle.start_sync().transcripts[0]
        list(handle)
        assert "shape" in heard.lower(), heard
        with running_server(create_app(ServerState(engine, MODEL)), free_port()) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.read_bytes()).decode(),
                                                            "format": "wav"}}
            out = chat(client, [audio])
    finally:
        engine.close()
    # The prompt is the transcript itself (the tiny recipe has no template text around it).
    assert out.usage.prompt_tokens == len(processor.tokenizer(heard, add_special_tokens=False)["input_ids"])


def test_remote_images_only_when_allowed(engine):
    import http.server
    import threading

    picture = png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/shape.png" else 404)
            self.end_headers()
            self.wfile.write(picture if self.path == "/shape.png" else b"")

        def log_message(self, *args):
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    # The server's own limits: same engine, but this front door may fetch image URLs (from
    # 127.0.0.1 too, which the default refuses: see tests/test_security_serve.py).
    remote = ServerState(engine, MODEL, limits=Limits(allow_remote_images=True, allow_private_image_hosts=True))
    try:
        with running_server(create_app(remote), free_port()) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            fetched = chat(client, [image_part(url=base + "/shape.png"), {"type": "text", "text": "What is this?"}])
            inline = chat(client, [image_part(picture), {"type": "text", "text": "What is this?"}])
            assert fetched.choices[0].message.content == inline.choices[0].message.content
            with pytest.raises(openai.BadRequestError) as err:
                chat(client, [image_part(url=base + "/missing.png")])
            assert "HTTP 404" in err.value.body["message"]
    finally:
        images.shutdown()


def test_several_images_in_one_turn_and_over_the_limit(client, server):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    three = chat(client, [*(image_part(png_bytes(c)) for c in colours), {"type": "text", "text": "Which?"}])
    one = chat(client, [image_part(), {"type": "text", "text": "Which?"}])
    assert three.usage.prompt_tokens == one.usage.prompt_tokens + 2 * 18  # 16 patches, end token, "\n" each
    nine = {"model": MODEL, "max_tokens": 2, "messages": [
        {"role": "user", "content": [image_part(png_bytes(colours[i % 3])) for i in range(5)]},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": [image_part() for _ in range(4)] + [{"type": "text", "text": "and?"}]}]}
    refused = httpx.post(server + "/v1/chat/completions", json=nine, timeout=60)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "too_many_images" and error["param"] == "messages"
    assert "9 images in the request (all turns together); the limit is 8 images per request" in error["message"]
