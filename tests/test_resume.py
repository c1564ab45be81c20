"""Checkpoints that survive a kill or a full disk: leftover temporaries are never taken for a
checkpoint, a half-written base/ model does not break the next run, and disk full is one line."""
import errno
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from omnilm.cli import main
from omnilm.errors import OmniError
from omnilm.files import DiskFull, atomic_folder
from omnilm.model.checkpoint import checkpoint_dirs
from omnilm.model.saved import load_pretrained
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe

FAST = {"max_steps": 6, "save_every": 3, "log_every": 1, "batch_size": 4}


def stop_at(step):
    def callback(state, model):
        if state.step == step:
            raise KeyboardInterrupt
    return callback


def test_a_leftover_checkpoint_temp_is_never_loaded_and_is_removed_on_resume(tiny_data, tmp_path, capsys):
    recipe = tiny_recipe(tiny_data, tmp_path, train=FAST)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[stop_at(4)])
    checkpoints = tmp_path / "run" / "checkpoints"
    # A kill after state.json but before the rename: a complete-looking step-5 under its temporary name.
    (checkpoints / "step-0000004").rename(checkpoints / "step-0000005.tmp")
    (checkpoints / "step-0000005.tmp" / "state.json").write_text('{"step": 5, "micro": 5, "samples": 20}')
    run = tmp_path / "run"
    assert [p.name for p in checkpoint_dirs(run)] == ["step-0000003"]

    step3 = load_file(str(checkpoints / "step-0000003" / "weights.safetensors"))
    loaded = dict(load_pretrained(run)[0].named_parameters())  # what chat and serve load
    assert all(torch.equal(loaded[k], v) for k, v in step3.items())
    assert main(["chat", "--model", str(run), "--max-new-tokens", "2", "hi"]) == 0
    capsys.readouterr()

    resumed = train(recipe, progress=False, resume=True)
    assert resumed.state.step == 6 and resumed.state.samples == 6 * 4  # continued from step 3, not 5
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000003", "step-0000006"]


def test_a_kill_while_base_llm_is_written_does_not_break_the_next_run(tiny_data, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_data, tmp_path, train={**FAST, "max_steps": 2})
    real_save = PreTrainedModel.save_pretrained

    def killed_midway(self, folder, *args, **kwargs):  # config written, weights cut short
        real_save(self, folder, *args, **kwargs)
        weights = Path(folder) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedModel, "save_pretrained", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            train(recipe, progress=False)
    base = tmp_path / "run" / "base"
    assert not (base / "llm").exists()
    (base / "llm.tmp").mkdir()  # as a kill -9 would leave it
    (base / "llm.tmp" / "config.json").write_text("{}")

    result = train(recipe, progress=False, resume=True)
    assert result.state.step == 2
    assert (base / "llm" / "model.safetensors").stat().st_size > 1000 and not (base / "llm.tmp").exists()


def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", str(CONFIGS / "tiny-stage1.yaml"), "--quiet", f"--data.path={tiny_data['coco']}",
            f"--data.image_dir={tiny_data['coco_images']}", f"--train.output_dir={run}",
            *(f"--train.{k}={v}" for k, v in FAST.items())]
    real_save = torch.save

    def disk_fills_at_step_6(obj, path, *a, **kw):
        if "step-0000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_fills_at_step_6)
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("omnilm: error")]
    assert re.search(r"disk full while writing \S+step-0000006: it needs about [\d.]+[kMGT]?B, [\d.]+[kMGT]?B free", line)
    assert "--resume (from step-0000003" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003"]  # no partial step-6

    step3 = load_file(str(run / "checkpoints" / "step-0000003" / "weights.safetensors"))
    loaded = dict(load_pretrained(run)[0].named_parameters())
    assert all(torch.equal(loaded[k], v) for k, v in step3.items())
    assert main([*args, "--resume"]) == 0
    assert (run / "weights.safetensors").is_file()


def test_atomic_folder_leaves_nothing_behind_and_names_the_space_needed(tmp_path):
    target = tmp_path / "llm"
    with pytest.raises(DiskFull, match=r"needs about 2\.00MB, [\d.]+[kMGT]?B free"):
        with atomic_folder(target, needed=2_000_000) as tmp:
            (tmp / "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError, match="not about space"):  # other failures pass through unchanged
        with atomic_folder(target, needed=10) as tmp:
            raise ValueError("not about space")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(target, needed=10) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["llm"] and (target / "config.json").is_file()


def test_disk_full_on_any_other_write_of_a_run_is_the_same_clear_error(tiny_data, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("omnilm.training.loop.plot_metrics", no_space)
    with pytest.raises(DiskFull, match=r"disk full while writing \S+run: [\d.]+[kMGT]?B free .* with --resume"):
        train(tiny_recipe(tiny_data, tmp_path, train={**FAST, "max_steps": 2}), progress=False)


def test_a_checkpoint_from_before_save_state_is_refused_with_what_to_do(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, train={**FAST, "max_steps": 4})
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[stop_at(3)])
    (tmp_path / "run" / "checkpoints" / "step-0000003" / "optimizer.pt").write_bytes(b"")  # the old layout's file
    with pytest.raises(OmniError, match=r"step-0000003 was written by an older omnilm .* model.init_from=\S+run"):
        train(recipe, progress=False, resume=True)
