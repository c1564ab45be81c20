"""The transcription route: Whisper turns speech into prompt text (the original app's way)."""
import pytest

from omnilm.audio.route import Transcription
from omnilm.config import TranscriberConfig, load_recipe
from omnilm.core.sample import Message, Sample
from omnilm.errors import ConfigError, DataError
from omnilm.model.build import build_model
from omnilm.model.saved import load_pretrained
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe

OFFLINE_WHISPER = {"backend": "ctranslate2", "name_or_path": "zoo:whisper-tiny.en"}


def spoken(tiny_data):
    from omnilm.data.speech import TRAIN_VOICE, synthesize

    text = "What is the colour of the shape in this picture?"
    return synthesize([text], TRAIN_VOICE, tiny_data["root"] / "speech", progress=False)[0], text


def test_transcript_replaces_the_audio_marker(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, model={"transcriber": OFFLINE_WHISPER})
    model, processor = build_model(recipe)
    assert processor.audio_route == "transcribe"
    transcription = Transcription.for_processor(processor)  # the step before the processor
    wav, text = spoken(tiny_data)
    sample = Sample([Message("user", "<image>Question: <audio>")], images=[sorted(tiny_data["coco_images"].iterdir())[0]],
                    audios=[wav])
    heard_sample, transcripts = transcription(sample)
    enc = processor.encode_prompt(heard_sample)
    heard = transcripts[0].lower()
    assert "shape" in heard and "picture" in heard, heard
    decoded = processor.decode(enc.input_ids)
    assert transcripts[0] in decoded and "audio" not in enc.media


def test_route_is_chosen_at_inference_time(tiny_data, tmp_path):
    run = train(tiny_recipe(tiny_data, tmp_path, train={"max_steps": 1}), progress=False).run_dir
    _, plain = load_pretrained(run)
    wav, _ = spoken(tiny_data)
    with pytest.raises(DataError, match="no audio encoder and no transcriber"):
        plain.encode_prompt(Sample([Message("user", "<audio>")], audios=[wav]))
    with pytest.raises(ConfigError, match="audio route transcribe needs a transcriber"):
        load_pretrained(run, audio_route="transcribe")
    model, voiced = load_pretrained(run, audio_route="transcribe", transcriber=TranscriberConfig(**OFFLINE_WHISPER))
    heard, transcripts = Transcription.for_processor(voiced)(Sample([Message("user", "<audio>")], audios=[wav]))
    assert transcripts and transcripts[0].strip()
    assert voiced.encode_prompt(heard).input_ids.tolist()


def test_native_route_needs_an_audio_encoder():
    with pytest.raises(ConfigError, match="audio_route=native needs model.audio"):
        load_recipe(CONFIGS / "tiny-stage1.yaml", ["model.audio_route=native"])
