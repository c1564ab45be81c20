"""`omnilm chat` on a tiny model trained for two steps: one-shot through the CLI, and the REPL
scripted line by line (history kept, /image, /reset, /quit, errors reported not raised)."""
from __future__ import annotations

import pytest

from omnilm.audio.route import Transcription
from omnilm.chat import ChatSession, run_repl
from omnilm.cli import main
from omnilm.core.sample import Message, Sample
from omnilm.data.markers import with_markers
from omnilm.generation import generate
from omnilm.generation_settings import GenerationSettings
from omnilm.model.saved import load_pretrained
from omnilm.training.loop import train
from tests.conftest import tiny_recipe


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    recipe = tiny_recipe(tiny_data, tmp_path_factory.mktemp("chat"),
                         train={"max_steps": 2, "save_every": 1000, "log_every": 1})
    result = train(recipe, progress=False)
    return result.run_dir, sorted(tiny_data["coco_images"].glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def loaded(run):
    return load_pretrained(run[0])


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def processor(loaded):
    return loaded[1]


def test_one_shot_streams_the_answer_to_stdout(run, model, processor, capsys):
    run_dir, image = run
    code = main(["chat", "--model", str(run_dir), "--image", str(image), "--max-new-tokens", "12",
                 "What is in the picture?"])
    assert code == 0
    out = capsys.readouterr().out
    sample = Sample([Message("user", "<image>\nWhat is in the picture?")], images=[str(image)])
    expected = generate(model, processor, [sample], GenerationSettings(max_new_tokens=12))[0].text
    assert out == expected + "\n"


def test_one_shot_text_only_with_sampling_options(run, capsys):
    args = ["chat", "--model", str(run[0]), "--max-new-tokens", "6", "--temperature", "0.8", "--top-k", "20",
            "--seed", "3", "Hello"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first  # seeded: the same answer twice


def test_audio_flag_reaches_the_sample(run, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    # The tiny model has no audio encoder: the audio must get as far as the processor, which says so.
    assert main(["chat", "--model", str(run[0]), "--audio", str(wav), "--max-new-tokens", "2", "hi"]) == 2
    assert "audio" in capsys.readouterr().err


def test_bad_options_fail_with_one_line(run, capsys):
    assert main(["chat", "--model", str(run[0]), "--temperature", "-1", "hi"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["chat", "--model", str(run[0]), "--image", "no-such.png", "hi"]) == 2
    assert "file not found: no-such.png" in capsys.readouterr().err


def test_chat_lays_out_media_as_the_server_does():
    """A model trained on "<image>\nquestion" (the quickstart) reads the same text from both."""
    import numpy as np
    from PIL import Image

    from omnilm.serve.protocol import AudioClip, Turn, to_sample

    image, clip = Image.new("RGB", (8, 8)), AudioClip(np.zeros(160, dtype=np.float32))
    for parts, text, n_img, n_aud in [([image, "what color is the shape?"], "what color is the shape?", 1, 0),
                                      ([image, clip], "", 1, 1), ([clip, "Answer it."], "Answer it.", 0, 1)]:
        assert with_markers(text, n_img, n_aud) == to_sample([Turn("user", parts)]).messages[0].content
    assert with_markers("<image> then text", 1, 0) == "<image> then text"  # a marked item keeps its place


def test_repl_keeps_history_and_media(model, processor, run):
    _, image = run
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=8))
    out: list[str] = []
    run_repl(session, ["/image " + str(image), "What colour is it?", "", "And the shape?", "/quit", "never read"],
             out.append)
    text = "".join(out)
    assert "(image attached" in text
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    first_answer = session.messages[1].content
    second_prompt = session.last_sample
    assert second_prompt.messages[1].content == first_answer  # the second turn sees the first answer
    assert second_prompt.messages[0].content.startswith("<image>\n")
    assert second_prompt.images == [str(image)]  # the image stays with the conversation
    assert second_prompt.messages[2].content == "And the shape?"
    ids = processor.encode_prompt(second_prompt).input_ids.tolist()
    answer_ids = processor.tokenizer(first_answer, add_special_tokens=False)["input_ids"]
    assert any(ids[i:i + len(answer_ids)] == answer_ids for i in range(len(ids)))
    # What was streamed is what was stored (up to the whitespace the template adds back).
    assert text.count("\n") >= 3


def test_repl_sends_media_alone_on_an_empty_line(model, processor, run):
    _, image = run
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=4))
    run_repl(session, ["", "/image " + str(image), ""], [].append)
    assert [m.content for m in session.messages if m.role == "user"] == ["<image>"]
    assert session.images == [str(image)]


def test_repl_reset_unknown_command_and_errors(model, processor, tmp_path):
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=4))
    out: list[str] = []
    run_repl(session, ["hi", "/reset", "/image", "/image " + str(tmp_path / "missing.png"), "/frobnicate",
                       "/audio " + str(tmp_path / "x.wav"), "/help", "again"], out.append)
    text = "".join(out)
    assert "(conversation cleared)" in text
    assert "usage: /image PATH" in text
    assert "image file not found" in text
    assert "unknown command /frobnicate" in text
    assert "/reset" in text  # the help text
    assert [m.role for m in session.messages] == ["user", "assistant"]  # only the turn after /reset
    assert session.messages[0].content == "again"


def test_repl_turn_error_keeps_history(model, processor, tmp_path):
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"RIFF")
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=4))
    out: list[str] = []
    run_repl(session, ["/audio " + str(wav), "listen", "plain text"], out.append)
    assert "error:" in "".join(out) and "audio" in "".join(out)
    assert [m.content for m in session.messages if m.role == "user"] == ["plain text"]  # the failed turn left no trace
    assert session.audios == []


def test_one_shot_transcription_route_from_the_command_line(run, tmp_path, capsys):
    """`--audio-route transcribe`: Whisper's transcript takes the marker's place in the prompt."""
    from omnilm.config import TranscriberConfig
    from omnilm.data.speech import TRAIN_VOICE, synthesize

    run_dir, image = run
    wav = synthesize(["What colour is the shape?"], TRAIN_VOICE, tmp_path, progress=False)[0]
    code = main(["chat", "--model", str(run_dir), "--image", str(image), "--audio", str(wav),
                 "--audio-route", "transcribe", "--transcriber", "zoo:whisper-tiny.en", "--max-new-tokens", "8",
                 "Question: <audio>\nAnswer:"])
    assert code == 0
    voiced, voiced_processor = load_pretrained(run_dir, audio_route="transcribe",
                             transcriber=TranscriberConfig("ctranslate2", "zoo:whisper-tiny.en"))
    sample = Sample([Message("user", "<image>\nQuestion: <audio>\nAnswer:")], images=[str(image)], audios=[str(wav)])
    heard_sample, (heard,) = Transcription.for_processor(voiced_processor)(sample)
    assert "colo" in heard.lower() and "shape" in heard.lower()
    expected = generate(voiced, voiced_processor, [heard_sample], GenerationSettings(max_new_tokens=8))[0].text
    printed = capsys.readouterr()
    assert printed.out == expected + "\n"
    assert f"(heard: {heard})" in printed.err  # what Whisper heard, beside the answer
