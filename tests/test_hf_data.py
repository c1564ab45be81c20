"""data.source: hf: the same samples stored every way `datasets` reads them give the same token
ids, labels and pixels as the LLaVA JSON they came from; bad shards and rows are named or skipped."""
import json
import shutil

import pytest
import torch
from datasets import Dataset

from omnilm.config import DataConfig
from omnilm.model.build import build_processor
from omnilm.data.fixtures import caption_rows, trl_dataset, write_shards
from omnilm.data.sources import load_samples
from omnilm.data.streaming import StreamedBatches
from omnilm.errors import ConfigError, DataError
from omnilm.training.loop import train
from tests.conftest import tiny_recipe

ROWS = caption_rows(6, seed=5)


def llava_json(root):
    """The reference: LLaVA-Instruct JSON beside its image files."""
    (root / "images").mkdir()
    rows = []
    for i, (jpeg, caption) in enumerate(ROWS):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg)
        rows.append({"id": str(i), "image": f"images/{i}.jpg",
                     "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}]})
    (root / "llava.json").write_text(json.dumps(rows))
    return rows


def as_jsonl(root):  # LLaVA columns in JSON lines, image paths relative to the file
    rows = llava_json(root)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "rows.jsonl"


def as_parquet(root):  # TRL layout, images embedded
    trl_dataset(ROWS).to_parquet(str(root / "trl.parquet"))
    return root / "trl.parquet"


def as_saved(root):
    trl_dataset(ROWS).save_to_disk(str(root / "saved"))
    return root / "saved"


def as_arrow(root):  # the .arrow file save_to_disk writes, read by the arrow builder
    saved = as_saved(root)
    return shutil.copy(next(saved.glob("*.arrow")), root / "trl.arrow")


def as_shards(root):  # WebDataset: KEY.jpg + KEY.txt, in two tars
    write_shards(ROWS, root / "shards", 2)
    return root / "shards" / "*.tar"


def as_trl_markers(root):  # TRL layout with <image> in string content and image paths
    llava_json(root)
    rows = [{"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": caption}],
             "images": [f"images/{i}.jpg"]} for i, (_, caption) in enumerate(ROWS)]
    Dataset.from_list(rows).to_json(str(root / "trl.jsonl"))
    return root / "trl.jsonl"


@pytest.fixture(scope="module")
def processor(tiny_data, tmp_path_factory):
    return build_processor(tiny_recipe(tiny_data, tmp_path_factory.mktemp("p")))


@pytest.mark.parametrize("write", [as_jsonl, as_parquet, as_arrow, as_saved, as_shards, as_trl_markers])
def test_every_storage_gives_the_samples_of_the_llava_json(write, processor, tmp_path):
    (tmp_path / "ref").mkdir()
    llava_json(tmp_path / "ref")
    reference = load_samples(DataConfig(source="llava", path=str(tmp_path / "ref" / "llava.json"))).samples
    (tmp_path / "hf").mkdir()
    samples = load_samples(DataConfig(source="hf", path=str(write(tmp_path / "hf")))).samples
    assert len(samples) == len(reference) == len(ROWS)
    for got, want in zip(samples, reference):
        a, b = processor(got), processor(want)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert len(a.media["image"]) == 1 and torch.equal(a.media["image"][0], b.media["image"][0])


def test_a_truncated_tar_names_the_shard(tmp_path):
    path = as_shards(tmp_path)
    shard = tmp_path / "shards" / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside its first member
    with pytest.raises(DataError, match="could not be read to the end"):
        load_samples(DataConfig(source="hf", path=str(path)))


def bad_rows(root):
    """Row 1 has no image bytes; row 3 has two <image> markers and one image."""
    rows = [{"messages": [{"role": "user", "content": "<image>" * (2 if i == 3 else 1)},
                          {"role": "assistant", "content": caption}],
             "images": [{"bytes": b"" if i == 1 else jpeg, "path": None}]} for i, (jpeg, caption) in enumerate(ROWS)]
    Dataset.from_list(rows).to_parquet(str(root / "bad.parquet"))
    return root / "bad.parquet"


def test_bad_rows_are_named_or_skipped_and_counted(tmp_path):
    path = bad_rows(tmp_path)
    with pytest.raises(DataError, match=r"bad.parquet row #1: image has neither bytes nor a path.*skip_bad"):
        load_samples(DataConfig(source="hf", path=str(path)))
    loaded = load_samples(DataConfig(source="hf", path=str(path), skip_bad=True))
    assert len(loaded.samples) == len(ROWS) - 2 and loaded.skipped == 2
    assert "row #3: 2 <image> markers in the messages but 1 images" in loaded.bad[1]


def test_streamed_bad_rows_are_named_or_skipped(tmp_path, processor):
    from omnilm.data.dataset import SampleDataset
    path = bad_rows(tmp_path)

    def first_batch(skip_bad):
        cfg = DataConfig(source="hf", path=str(path), streaming=True, shuffle_buffer=1, skip_bad=skip_bad)
        stream = StreamedBatches(cfg, SampleDataset([], processor), list, batch_size=len(ROWS), rank=0, world=1,
                                 seed=0, start=0, total=1)
        return next(iter(stream))

    with pytest.raises(DataError, match=r"streamed row #1 \(process 0, epoch 0\): image has neither bytes nor a path"):
        first_batch(False)
    assert [item is None for item in first_batch(True)] == [False, True, False, True, False, False]


def test_unknown_columns_and_layouts_are_config_errors(tmp_path):
    path = as_parquet(tmp_path)
    with pytest.raises(ConfigError, match="data.columns.pictures: unknown role"):
        load_samples(DataConfig(source="hf", path=str(path), columns={"pictures": "images"}))
    with pytest.raises(ConfigError, match="no column 'imgs'"):
        load_samples(DataConfig(source="hf", path=str(path), columns={"images": "imgs"}))
    Dataset.from_list([{"question": "q", "answer": "a"}]).to_parquet(str(tmp_path / "qa.parquet"))
    with pytest.raises(DataError, match="cannot tell the column layout.*question, answer"):
        load_samples(DataConfig(source="hf", path=str(tmp_path / "qa.parquet")))
    with pytest.raises(DataError, match="datasets cannot open it"):
        load_samples(DataConfig(source="hf", path=str(tmp_path / "missing" / "nothing-here")))


@pytest.mark.parametrize("kind,data", [
    ("parquet", {}),
    ("parquet", {"group_by_length": True, "packing": True}),
    ("shards", {"streaming": True}),
    ("shards", {"packing": True}),
])
def test_the_tiny_recipe_trains_from_parquet_and_webdataset(kind, data, tiny_data, tmp_path):
    path = as_parquet(tmp_path) if kind == "parquet" else as_shards(tmp_path)
    recipe = tiny_recipe(tiny_data, tmp_path, data={"source": "hf", "path": str(path), "image_dir": None, **data},
                         train={"max_steps": 3, "batch_size": 3, "log_every": 1, "save_every": 10})
    result = train(recipe, progress=False)
    assert result.state.step == 3 and result.state.samples == 9 and len(result.losses) == 3


def test_cache_features_reads_a_streamed_source_by_image_hash(tiny_data, tmp_path):
    """Image bytes have no path: the cache keys them by content, so a shuffled stream finds them."""
    from omnilm.training.cache import cache_features

    recipe = tiny_recipe(tiny_data, tmp_path, data={"source": "hf", "path": str(as_shards(tmp_path)), "image_dir": None,
                                                    "streaming": True, "feature_cache": str(tmp_path / "cache")},
                         train={"max_steps": 2, "batch_size": 3, "save_every": 10})
    cache = cache_features(recipe, progress=False)
    assert len(cache) == len(ROWS) and all(key.startswith("sha1:") and len(key) == 45 for key in cache.index)
    assert train(recipe, progress=False).state.samples == 6


def test_audio_arrays_with_their_rate_reach_the_audio_reader(tmp_path):
    import numpy as np

    from omnilm.data.audio import SAMPLING_RATE, load_sample_audio

    tone = np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440).astype(np.float32)  # 1 s at 8 kHz
    Dataset.from_list([{"messages": [{"role": "user", "content": "<audio> what is it?"},
                                     {"role": "assistant", "content": "a tone"}],
                        "audios": [{"array": tone.tolist(), "sampling_rate": 8000}]}]).to_parquet(str(tmp_path / "a.parquet"))
    (sample,) = load_samples(DataConfig(source="hf", path=str(tmp_path / "a.parquet"))).samples
    waveform = load_sample_audio(sample.audios[0])
    assert sample.messages[0].content == "<audio> what is it?" and len(waveform) == SAMPLING_RATE
