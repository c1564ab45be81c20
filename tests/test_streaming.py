"""data.streaming: processes read disjoint rows that together cover the data set, and a run
killed mid-stream resumes with the next unseen row, reaching the same weights as one that never
stopped."""
import hashlib

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from omnilm.config import DataConfig
from omnilm.data.fixtures import make_hf
from omnilm.data.streaming import StreamedBatches
from omnilm.errors import ConfigError
from omnilm.training.loop import train
from tests.conftest import tiny_recipe

ROWS = 12


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    return make_hf(tmp_path_factory.mktemp("hf"), count=ROWS)


class RowNames:
    """Stands in for SampleDataset: names each row by its image (every image differs), so the
    test sees which rows came."""

    def encode(self, sample):
        return hashlib.sha1(sample.images[0]).hexdigest()[:10]


def streamed_ids(path, *, rank=0, world=1, start=0, total=ROWS, batch_size=1, shuffle_buffer=1, workers=0):
    cfg = DataConfig(source="hf", path=str(path), streaming=True, shuffle_buffer=shuffle_buffer)
    stream = StreamedBatches(cfg, RowNames(), list, batch_size=batch_size, rank=rank, world=world, seed=3,
                             start=start, total=total)
    return [ids for ids in DataLoader(stream, batch_size=None, num_workers=workers)]


@pytest.mark.parametrize("kind", ["parquet", "shards"])  # one file (split by row), two tars (split by shard)
def test_two_ranks_see_disjoint_rows_that_cover_the_epoch(hf_data, kind):
    half = ROWS // 2  # each rank's share of one epoch
    ranks = [sum(streamed_ids(hf_data[kind], rank=r, world=2, total=half, shuffle_buffer=4), []) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == half
    assert not set(ranks[0]) & set(ranks[1])
    assert len(set(ranks[0]) | set(ranks[1])) == ROWS


def test_epochs_reshuffle_and_a_late_start_continues_the_same_stream(hf_data):
    whole = streamed_ids(hf_data["shards"], total=9, batch_size=4, shuffle_buffer=5)  # 36 rows: three epochs
    epochs = [sum(whole, [])[e * ROWS:(e + 1) * ROWS] for e in range(3)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs) and epochs[0] != epochs[1]
    assert streamed_ids(hf_data["shards"], start=5, total=9, batch_size=4, shuffle_buffer=5) == whole[5:]
    # Two DataLoader workers decode alternate micro-batches; the order is the same.
    assert streamed_ids(hf_data["shards"], total=9, batch_size=4, shuffle_buffer=5, workers=2) == whole


def stream_recipe(tiny_data, tmp_path, path, **data):
    return tiny_recipe(tiny_data, tmp_path, data={"source": "hf", "path": str(path), "image_dir": None,
                                                  "streaming": True, "shuffle_buffer": 8, **data},
                       train={"max_steps": 6, "save_every": 3, "log_every": 1, "batch_size": 4})


def test_kill_and_resume_mid_stream_reaches_the_same_weights(tiny_data, hf_data, tmp_path):
    """Six steps of four rows = two epochs of the 12-row stream, killed in the first."""
    straight = train(stream_recipe(tiny_data, tmp_path / "a", hf_data["parquet"], packing=True), progress=False)

    def kill_at_4(state, model):
        if state.step == 4:
            raise KeyboardInterrupt

    interrupted = stream_recipe(tiny_data, tmp_path / "b", hf_data["parquet"], packing=True)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False, callbacks=[kill_at_4])
    resumed = train(interrupted, progress=False, resume=True)
    assert resumed.state.step == 6 and resumed.state.samples == straight.state.samples == 24
    a = load_file(str(straight.run_dir / "weights.safetensors"))
    b = load_file(str(resumed.run_dir / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_refuses_what_needs_the_size_up_front(tiny_data, hf_data, tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        tiny_recipe(tiny_data, tmp_path, data={"source": "hf", "path": str(hf_data["parquet"]), "streaming": True},
                    train={"epochs": 1})
    with pytest.raises(ConfigError, match="group_by_length"):
        tiny_recipe(tiny_data, tmp_path, data={"source": "hf", "path": "x", "streaming": True,
                                               "group_by_length": True})
    with pytest.raises(ConfigError, match="data.streaming: only for data.source=hf"):
        tiny_recipe(tiny_data, tmp_path, data={"streaming": True})
