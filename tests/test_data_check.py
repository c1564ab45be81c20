"""Bad training data is found and named: by the sources, by load_audio, by `omnilm data check`
(which reads every row as training does) and in the training log when data.skip_bad skips it."""
import json
import logging
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf

from omnilm.cli import main
from omnilm.config import DataConfig
from omnilm.data.audio import load_audio
from omnilm.model.build import build_processor
from omnilm.model.data_check import check_data
from omnilm.data.dataset import SampleDataset
from omnilm.data.rows import LOGGED_SKIPS
from omnilm.core.sample import Message, Sample
from omnilm.data.sources import load_samples
from omnilm.errors import DataError, MediaError
from omnilm.training.cache import cache_features
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe

NOT_AN_IMAGE = "not an image in an accepted format (accepted: PNG, JPEG, WebP, GIF, BMP)"


def coco_copy(tiny_data, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_data["root"] / "coco", root)
    return root / "annotations" / "captions_train2017.json", root / "train2017"


def llava_file(tmp_path, rows):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    return path


def chat(*turns):
    return [{"from": who, "value": text} for who, text in zip(turns[::2], turns[1::2])]


# --- the sources --------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["coco", "llava"])
def test_non_utf8_json_is_one_clear_error_naming_file_and_byte(tiny_data, tmp_path, source):
    path = tmp_path / f"{source}.json"
    text = tiny_data[source].read_text()
    cut = text.index("a ", text.index("caption" if source == "coco" else "value"))
    path.write_bytes(text[:cut].encode() + b"caf\xe9 " + text[cut:].encode())  # Latin-1 "café"
    line = text[:cut].count("\n") + 1
    # A whole-file format cannot be parsed around the byte, so skip_bad cannot skip it either.
    with pytest.raises(DataError, match=rf"{path.name}: not UTF-8 text: byte 0xe9 at byte offset {cut + 3}"
                                        rf"( \(line {line}\))?; save it as UTF-8"):
        load_samples(DataConfig(source=source, path=str(path), skip_bad=True))


def test_non_utf8_jsonl_line_is_one_bad_row(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"messages": "caf\xe9"}\n' + json.dumps(good).encode())
    with pytest.raises(DataError, match=r"chat.jsonl line 2: not UTF-8 text: byte 0xe9 at byte offset 17"):
        load_samples(DataConfig(source="jsonl", path=str(path)))
    loaded = load_samples(DataConfig(source="jsonl", path=str(path), skip_bad=True))
    assert [s.id for s in loaded.samples] == ["1", "3"] and loaded.skipped == 1


def test_coco_image_without_file_name_fails_its_captions_only(tiny_data, tmp_path):
    ann_file, image_dir = coco_copy(tiny_data, tmp_path)
    data = json.loads(ann_file.read_text())
    del data["images"][0]["file_name"]  # image id 1, captioned by annotations #0 and #1
    ann_file.write_text(json.dumps(data))
    cfg = DataConfig(source="coco", path=str(ann_file), image_dir=str(image_dir))
    with pytest.raises(DataError, match=r"annotation #0: the 'images' entry with id 1 has no 'file_name'"):
        load_samples(cfg)
    cfg.skip_bad = True
    loaded = load_samples(cfg)
    assert len(loaded.samples) == 94 and [b.split(": ", 1)[0] for b in loaded.bad] == [
        f"{ann_file} annotation #0", f"{ann_file} annotation #1"]


def test_unknown_role_is_named(tmp_path):
    path = llava_file(tmp_path, [{"id": "a", "conversations": chat("human", "hi", "xyz", "hello")}])
    with pytest.raises(DataError, match=r"row #0: unknown role 'xyz' \(use one of human, user, gpt"):
        load_samples(DataConfig(source="llava", path=str(path)))


def test_empty_assistant_reply_is_a_bad_row(tmp_path):
    rows = [{"id": "empty", "conversations": chat("human", "hi", "gpt", " ")},
            {"id": "none", "conversations": chat("human", "hi")},
            {"id": "ok", "conversations": chat("human", "hi", "gpt", "hello")}]
    loaded = load_samples(DataConfig(source="llava", path=str(llava_file(tmp_path, rows)), skip_bad=True))
    assert [s.id for s in loaded.samples] == ["ok"]
    assert loaded.bad[0].endswith("row #0: turn 2: empty assistant reply (nothing to learn)")
    assert loaded.bad[1].endswith("row #1: no assistant reply to learn")


def test_processor_refuses_an_empty_reply_built_in_code(tiny_data, tmp_path):
    processor = build_processor(tiny_recipe(tiny_data, tmp_path))
    processor(Sample([Message("user", "hi"), Message("assistant", "hello")], id="fine"))
    with pytest.raises(DataError, match=r"sample q7: turn 2: empty assistant reply"):
        processor(Sample([Message("user", "hi"), Message("assistant", "")], id="q7"))


# --- audio: what a corrupt WAV is ---------------------------------------------------------------

def speech(tiny_data):
    return sorted((tiny_data["root"] / "asr").glob("*.wav"))


def test_corrupt_wavs_are_refused_and_real_audio_is_not(tiny_data, tmp_path):
    real = speech(tiny_data)[0]
    header, body = real.read_bytes()[:44], real.read_bytes()[44:]
    assert header[36:40] == b"data"
    rng = np.random.default_rng(0)

    noise = tmp_path / "noise.wav"  # a valid header, then as many random bytes as it declares
    noise.write_bytes(header + rng.bytes(len(body)))
    with pytest.raises(MediaError, match=r"noise.wav looks like random bytes, not sound"):
        load_audio(noise)

    cut = tmp_path / "cut.wav"  # the header of a longer file: a cut-off download
    cut.write_bytes(header + body[:1000])
    with pytest.raises(MediaError, match=rf"cut.wav is corrupt: its header declares {len(body) + 36} bytes of 'RIFF' "
                                         r"but the file holds 1036"):
        load_audio(cut)

    # Not corrupt: real speech, a streamed WAV (length "unknown", 0xFFFFFFFF), a full-scale tone.
    assert load_audio(real).size > 4000
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(header[:4] + struct.pack("<I", 0xFFFFFFFF) + header[8:40]
                         + struct.pack("<I", 0xFFFFFFFF) + body)
    np.testing.assert_array_equal(load_audio(streamed), load_audio(real))
    tone = tmp_path / "tone.wav"
    sf.write(tone, np.sin(np.arange(16000) / 3.0).astype(np.float32), 16000, subtype="PCM_16")
    assert load_audio(tone).size == 16000


# --- omnilm data check --------------------------------------------------------------------------

def broken_coco(tiny_data, tmp_path):
    """Bad: annotations #0-#1 (image without file_name), #2-#3 (corrupt image), #4 (no caption)."""
    ann_file, image_dir = coco_copy(tiny_data, tmp_path)
    data = json.loads(ann_file.read_text())
    del data["images"][0]["file_name"]
    (image_dir / data["images"][1]["file_name"]).write_bytes(b"not a jpeg")
    del data["annotations"][4]["caption"]
    ann_file.write_text(json.dumps(data))
    good = [str(a["id"]) for a in data["annotations"][5:]]
    return ann_file, image_dir, data["images"][1]["file_name"], good


def test_data_check_lists_each_bad_row_and_writes_the_good_ids(tiny_data, tmp_path, capsys):
    ann_file, image_dir, corrupt, good = broken_coco(tiny_data, tmp_path)
    ids = tmp_path / "good.txt"
    status = main(["data", "check", str(CONFIGS / "tiny-stage1.yaml"), f"--data.path={ann_file}",
                   f"--data.image_dir={image_dir}", "--fix-list", str(ids), "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line for line in out if line.startswith("bad: ")] == [
        f"bad: {ann_file} annotation #0: the 'images' entry with id 1 has no 'file_name'",
        f"bad: {ann_file} annotation #1: the 'images' entry with id 1 has no 'file_name'",
        f"bad: {ann_file} annotation #4: missing field 'caption'",
        f"bad: sample 3: cannot read image {image_dir / corrupt}: {NOT_AN_IMAGE}",
        f"bad: sample 4: cannot read image {image_dir / corrupt}: {NOT_AN_IMAGE}",
    ]
    assert out[-1] == f"5 of 96 rows are bad; {len(good)} good"
    assert ids.read_text().split() == good


def test_data_check_passes_clean_data_and_reads_audio_as_training_does(tiny_data, tmp_path, capsys):
    assert main(["data", "check", str(CONFIGS / "tiny-stage1.yaml"), f"--data.path={tiny_data['coco']}",
                 f"--data.image_dir={tiny_data['coco_images']}", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "all 96 rows are good"

    root = tmp_path / "asr"
    shutil.copytree(tiny_data["root"] / "asr", root)
    first, second = sorted(root.glob("*.wav"))[:2]
    first.write_bytes(first.read_bytes()[:44] + np.random.default_rng(1).bytes(first.stat().st_size - 44))
    second.write_bytes(second.read_bytes()[:2000])
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    bad_rows = {str(n): w for n, row in enumerate(rows, 1) for w in (first, second) if row["audio"] == w.name}
    recipe = tiny_recipe(tiny_data, tmp_path, "tiny-audio.yaml", data={"path": str(root / "manifest.jsonl")})
    report = check_data(recipe, progress=False)
    assert report.rows == len(rows) and len(report.bad) == len(bad_rows)
    for line in report.bad:
        number = line.split(":")[0].removeprefix("sample ")
        reason = "looks like random bytes" if bad_rows[number] == first else "is corrupt: its header declares"
        assert f"audio {bad_rows[number]} {reason}" in line
    assert report.good_ids == [str(n) for n in range(1, len(rows) + 1) if str(n) not in bad_rows]


def test_training_with_skip_bad_names_each_skipped_item(tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ann_file, image_dir, corrupt, _ = broken_coco(tiny_data, tmp_path)
    recipe = tiny_recipe(tiny_data, tmp_path, data={"path": str(ann_file), "image_dir": str(image_dir),
                                                    "skip_bad": True, "limit": 16},
                         train={"max_steps": 4, "batch_size": 8, "save_every": 100, "log_every": 1})
    result = train(recipe, progress=False)  # 16 samples, 2 batches an epoch: each drawn twice
    assert result.state.skipped == 4
    named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped sample")]
    assert sorted(named) == [f"skipped sample {n}: cannot read image {image_dir / corrupt}: {NOT_AN_IMAGE}"
                             for n in ("3", "4")]  # once each, not per draw
    assert "annotation #0: the 'images' entry with id 1 has no 'file_name'" in caplog.text


def test_skipped_samples_are_named_once_each_up_to_a_cap(tiny_data, tmp_path, caplog):
    missing = [Sample([Message("user", "<image>"), Message("assistant", "a square")], [str(tmp_path / f"{i}.jpg")],
                      id=f"s{i}") for i in range(LOGGED_SKIPS + 5)]
    dataset = SampleDataset(missing, build_processor(tiny_recipe(tiny_data, tmp_path)), skip_bad=True)
    for _ in range(2):  # two epochs
        assert [dataset[i] for i in range(len(dataset))] == [None] * len(dataset)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:LOGGED_SKIPS] == [f"skipped sample s{i}: image not found: {tmp_path / f'{i}.jpg'}"
                                       for i in range(LOGGED_SKIPS)]
    assert messages[LOGGED_SKIPS:] == [
        "more bad samples skipped: counted, not named (`omnilm data check RECIPE` lists them all)"]


def test_cache_features_with_skip_bad_names_each_skipped_image(tiny_data, tmp_path, caplog):
    ann_file, image_dir, corrupt, _ = broken_coco(tiny_data, tmp_path)
    recipe = tiny_recipe(tiny_data, tmp_path, data={"path": str(ann_file), "image_dir": str(image_dir),
                                                    "skip_bad": True})
    cache = cache_features(recipe, out=str(tmp_path / "cache"), progress=False)
    assert len(cache) == 46  # 48 images: one without file_name, one corrupt
    assert [r.getMessage() for r in caplog.records] == [
        f"not cached: cannot read image {image_dir / corrupt}: {NOT_AN_IMAGE}",
        "1 of 47 images were unreadable and not cached (data.skip_bad=true)"]
