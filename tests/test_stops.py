"""Ctrl-C (SIGINT) and SIGTERM in the middle of an accumulation step: the run finishes that
optimizer step, saves it, and --resume reaches exactly the weights of a run never stopped.
The signals are real, sent to this process while a micro-batch's forward runs."""
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from omnilm.cli import main
from omnilm.config import save_recipe
from omnilm.errors import TrainingStopped
from omnilm.model.checkpoint import checkpoint_dirs
from omnilm.model.omni import OmniLM
from omnilm.training.checkpoints import read_state
from omnilm.training.loop import train
from tests.conftest import tiny_recipe
from tests.test_fsdp import stage1_run, stage2_lora  # noqa: F401  (stage1_run is a fixture)

# 4 steps of 2 micro-batches: forwards 5 and 6 are step 3's; the periodic checkpoint is at step 2.
GRAD_ACCUM = 2


def signals_at(monkeypatch, forwards: dict[int, int]) -> None:
    """Send signal forwards[n] to this process when the n-th training forward starts."""
    real, calls = OmniLM.forward, []

    def forward(self, *args, **kwargs):
        calls.append(None)
        if len(calls) in forwards:
            os.kill(os.getpid(), forwards[len(calls)])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OmniLM, "forward", forward)


def lora_run(tiny_data, stage1_run, tmp_path, name):  # noqa: F811
    """LoRA dropout 0.1: a resume that lost the RNG state would draw other masks."""
    return stage2_lora(tiny_data, stage1_run, tmp_path, name, dropout=0.1, grad_accum=GRAD_ACCUM)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def straight(tiny_data, stage1_run, tmp_path_factory):  # noqa: F811
    run = train(lora_run(tiny_data, stage1_run, tmp_path_factory.mktemp("straight"), "run"), progress=False)
    return load_file(str(run.run_dir / "weights.safetensors"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_step_saves_that_step_and_resumes_exactly(tiny_data, stage1_run, straight, tmp_path,  # noqa: F811
                                                               monkeypatch, signum):
    recipe = lora_run(tiny_data, stage1_run, tmp_path, "stopped")
    with monkeypatch.context() as patch:
        signals_at(patch, {5: signum})
        with pytest.raises(TrainingStopped, match=f"stopped by {signal.Signals(signum).name} after saving step 3"):
            train(recipe, progress=False)
    assert signal.getsignal(signum) is not None and signal.getsignal(signal.SIGINT) == signal.default_int_handler
    saved = checkpoint_dirs(tmp_path / "stopped")
    assert [p.name for p in saved] == ["step-0000002", "step-0000003"]
    assert read_state(saved[-1]).micro == 3 * GRAD_ACCUM  # a whole step: nothing half-way
    assert not (tmp_path / "stopped" / "weights.safetensors").exists()

    resumed = train(recipe, progress=False, resume=True)
    assert resumed.state.step == 4
    assert_same(straight, load_file(str(resumed.run_dir / "weights.safetensors")))


def test_a_second_signal_stops_at_once_and_saves_nothing_of_the_step(tiny_data, stage1_run, straight,  # noqa: F811
                                                                       tmp_path, monkeypatch):
    recipe = lora_run(tiny_data, stage1_run, tmp_path, "stopped")
    recipe.train.save_every = 100
    with monkeypatch.context() as patch:
        signals_at(patch, {5: signal.SIGTERM, 6: signal.SIGINT})
        with pytest.raises(KeyboardInterrupt) as stopped:
            train(recipe, progress=False)
    assert not isinstance(stopped.value, TrainingStopped)
    # Step 2 is complete, but step 3's half has drawn dropout masks: a checkpoint now would not resume exactly.
    assert checkpoint_dirs(tmp_path / "stopped") == []
    resumed = train(recipe, progress=False, resume=True)
    assert_same(straight, load_file(str(resumed.run_dir / "weights.safetensors")))


def test_omnilm_train_reports_the_signal_and_exits_as_a_shell_expects(tiny_data, tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(tiny_data, tmp_path, train={"max_steps": 4, "batch_size": 2, "grad_accum": GRAD_ACCUM,
                                                     "save_every": 100})
    save_recipe(recipe, tmp_path / "recipe.yaml")
    signals_at(monkeypatch, {3: signal.SIGTERM})
    assert main(["train", str(tmp_path / "recipe.yaml"), "--quiet"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "omnilm: stopped by SIGTERM after saving step 2; continue with --resume" in err
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-0000002"]
