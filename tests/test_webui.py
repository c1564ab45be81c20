"""The web app in a real (headless) browser: upload an image, ask, see the answer stream in.

Needs Debian's chromium (`apt-get install -y chromium`) and `pip install playwright==1.65.2`;
Playwright's own browser download does not work offline, so it drives /usr/bin/chromium.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from test_serve_support import free_port, running_server, wav_bytes, write_tiny_model

from omnilm.model.saved import load_pretrained
from omnilm.serve.api import ServerState, create_app
from omnilm.serve.engine import Engine

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "test-artifacts" / "webui.png"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright==1.65.2)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    # OMNILM_WEBUI_MODEL points the test (and the README screenshot) at a trained model instead.
    folder = os.environ.get("OMNILM_WEBUI_MODEL") or write_tiny_model(tmp_path_factory.mktemp("ui-model"), audio=True)
    engine = Engine(*load_pretrained(folder)).start()
    try:
        name = "/".join(Path(folder).parts[-2:]) if os.environ.get("OMNILM_WEBUI_MODEL") else "tiny"
        with running_server(create_app(ServerState(engine, name), ui=True), free_port()) as url:
            yield url, engine
    finally:
        engine.close()


def ask_about_image(page, picture, question: str) -> None:
    """Upload `picture`, wait for its preview (the upload finished), type `question` and send."""
    page.locator("#image-input input[type=file]").set_input_files(str(picture))
    page.locator("#image-input img").first.wait_for()
    page.locator("#message textarea").fill(question)
    page.locator("#send").click()


def test_upload_image_ask_and_see_the_answer(browser, ui_server, tmp_path):
    from PIL import Image, ImageDraw

    url, engine = ui_server
    picture = tmp_path / "shape.png"
    img = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(img).ellipse((16, 16, 80, 80), fill=(30, 160, 60))
    img.save(picture)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/ui/")
    requests_before = engine.stats["requests"]
    ask_about_image(page, picture, "What colour is the shape?")

    page.locator("[data-testid=user] img").first.wait_for()  # the image is shown in the conversation
    page.get_by_text("What colour is the shape?").last.wait_for()
    answer = page.locator("[data-testid=bot]").last
    answer.wait_for()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while (engine.stats["requests"] == requests_before or engine.load) and time.monotonic() < deadline:
        page.wait_for_timeout(100)  # generation finished in the shared engine
    page.wait_for_timeout(1500)  # its last streamed piece reached the page, and update highlights faded
    assert engine.stats["requests"] > requests_before
    assert answer.inner_text().strip(), "the assistant's answer is empty"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    if os.environ.get("OMNILM_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(SCREENSHOT, ROOT / "docs" / "webui.png")

    # A follow-up question: the history (image included) stays on the page and in the prompt.
    page.locator("#message textarea").fill("Are you sure?")
    page.locator("#send").click()
    page.locator("[data-testid=bot]").nth(1).wait_for()
    page.get_by_text("Are you sure?").last.wait_for()
    assert page.locator("[data-testid=user] img").count() == 1

    page.close()


def test_several_uploads_go_in_one_turn_in_order(browser, ui_server, tmp_path):
    from PIL import Image

    url, engine = ui_server
    pictures = []
    for name, rgb in (("red", (220, 20, 20)), ("green", (20, 200, 20)), ("blue", (20, 20, 220))):
        Image.new("RGB", (48, 48), rgb).save(tmp_path / f"{name}.png")
        pictures.append(str(tmp_path / f"{name}.png"))
    seen = []
    stream = engine.stream
    engine.stream = lambda sample, *a, **k: seen.append(sample) or stream(sample, *a, **k)  # what the model is sent
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url + "/ui/")
        page.locator("#image-input input[type=file]").set_input_files(pictures[0])
        page.locator("#image-input img").first.wait_for()
        page.locator("#more-images input[type=file]").set_input_files(pictures[1:])
        page.locator("#more-images tbody tr").nth(1).wait_for()  # both extra uploads are listed
        page.locator("#message textarea").fill("Which colours?")
        page.locator("#send").click()
        page.locator("[data-testid=bot]").last.wait_for()
        page.locator("[data-testid=user] img").nth(2).wait_for()  # all three images shown in the turn
        page.close()
    finally:
        engine.stream = stream
    (sample,) = seen
    assert sample.messages[-1].content.count("<image>") == 3
    colours = [image.getpixel((0, 0)) for image in sample.images]
    assert colours == [(220, 20, 20), (20, 200, 20), (20, 20, 220)]  # the first input's, then the extras in order


def test_empty_message_shows_an_error_not_a_crash(browser, ui_server):
    url, engine = ui_server
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/ui/")
    page.locator("#send").click()
    page.get_by_text("Type a message, or add an image or audio.").first.wait_for()
    assert engine.alive
    page.close()


def test_audio_file_as_the_question(browser, ui_server, tmp_path):
    url, engine = ui_server
    if "audio" not in engine.model.encoders:
        pytest.skip("the model under test has no audio encoder")
    speech = tmp_path / "question.wav"
    speech.write_bytes(wav_bytes(1.0))
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/ui/")
    page.locator("#audio-input input[type=file]").set_input_files(str(speech))
    page.locator("#audio-input audio").first.wait_for(state="attached")
    requests_before = engine.stats["requests"]
    page.locator("#send").click()
    page.locator("[data-testid=user] audio").first.wait_for(state="attached")  # shown in the conversation
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while (engine.stats["requests"] == requests_before or engine.load) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert engine.stats["requests"] > requests_before
    page.close()


def test_transcription_route_shows_the_transcript(browser, tmp_path):
    from omnilm.config import TranscriberConfig
    from omnilm.data.speech import TRAIN_VOICE, synthesize

    wav = synthesize(["What colour is the shape?"], TRAIN_VOICE, tmp_path / "speech", progress=False)[0]
    whisper = TranscriberConfig(backend="ctranslate2", name_or_path="zoo:whisper-tiny.en")
    engine = Engine(*load_pretrained(write_tiny_model(tmp_path / "plain"), audio_route="transcribe",
                                     transcriber=whisper)).start()
    try:
        with running_server(create_app(ServerState(engine, "tiny"), ui=True), free_port()) as url:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url + "/ui/")
            page.locator("#audio-input input[type=file]").set_input_files(str(wav))
            page.locator("#audio-input audio").first.wait_for(state="attached")
            page.locator("#send").click()
            transcript = page.locator("[data-testid=user]").filter(has_text="transcript:").first
            transcript.wait_for()
            assert "shape" in transcript.inner_text().lower()
            page.close()
    finally:
        engine.close()
