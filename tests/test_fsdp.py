"""Two CPU processes over gloo under `accelerate launch`: FSDP2 (configs/accelerate/fsdp2.yaml)
and DDP train the tiny recipes to the weights one process reaches, and a run stopped and resumed
from its checkpoint (accelerate save_state / load_state) ends exactly where a straight run does."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnilm.config import load_recipe, save_recipe
from omnilm.training.loop import train
from tests.conftest import CONFIGS, ROOT, tiny_recipe
from tests.test_serve_support import free_port

pytestmark = pytest.mark.slow  # each launch starts two processes that import torch and build the model
STRATEGY_FLAGS = {
    "fsdp2": ["--config_file", str(CONFIGS / "accelerate" / "fsdp2.yaml")],
    "ddp": ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--num_machines", "1"],
}
# One process with grad_accum 2 sees each step's two micro-batches of 4 that two processes see
# side by side, and averages their mean losses the same way; only the order in which gradients
# are summed differs, so the weights agree to float rounding, not bit for bit.
ACROSS_PROCESS_COUNTS = {"rtol": 0, "atol": 1e-5}


def launch(strategy: str, recipe, tmp_path: Path, *args: str) -> None:
    recipe_file = tmp_path / f"{Path(recipe.train.output_dir).name}.yaml"
    save_recipe(recipe, recipe_file)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", *STRATEGY_FLAGS[strategy], "--num_processes", "2",
           "--main_process_port", str(free_port()),
           str(ROOT / "tests" / "launched_train.py"), str(recipe_file), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "weights.safetensors"))


def assert_same(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], **(tolerance or {"rtol": 0, "atol": 0}), msg=key)


def stage1(tiny_data, tmp_path, name: str, grad_accum: int = 1):
    """6 steps of 8 samples (4 a micro-batch), checkpoints at 3 and 6."""
    recipe = tiny_recipe(tiny_data, tmp_path, train={"max_steps": 6, "save_every": 3, "log_every": 1,
                                                     "batch_size": 4, "grad_accum": grad_accum})
    recipe.train.output_dir = str(tmp_path / name)
    return recipe


@pytest.fixture(scope="module")
def stage1_run(tiny_data, tmp_path_factory):
    recipe = tiny_recipe(tiny_data, tmp_path_factory.mktemp("s1"), train={"max_steps": 3, "save_every": 100})
    return train(recipe, progress=False).run_dir


def stage2_lora(tiny_data, stage1_run, tmp_path, name: str, dropout: float, grad_accum: int = 1):
    """The tiny stage 2 with a bf16/fp32 base instead of NF4: LoRA adapters + the projector."""
    return load_recipe(CONFIGS / "tiny-stage2.yaml", {
        "model": {"init_from": str(stage1_run),
                  "llm": {"name_or_path": str(stage1_run / "base" / "llm"), "quantization": "none",
                          "lora": {"dropout": dropout}},
                  "image": {"name_or_path": str(stage1_run / "base" / "image_encoder")}},
        "data": {"path": str(tiny_data["llava"]), "image_dir": str(tiny_data["llava_images"])},
        "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "save_every": 2, "log_every": 1,
                  "batch_size": 4, "grad_accum": grad_accum}})


def test_fsdp2_stage1_matches_one_process_and_resumes_exactly(tiny_data, tmp_path):
    one = train(stage1(tiny_data, tmp_path, "one", grad_accum=2), progress=False)
    launch("fsdp2", stage1(tiny_data, tmp_path, "fsdp"), tmp_path)
    fsdp = tmp_path / "fsdp"
    assert (fsdp / "checkpoints" / "step-0000006" / "pytorch_model_fsdp_0").is_dir()  # sharded, one file a process
    assert_same(weights(one.run_dir), weights(fsdp), **ACROSS_PROCESS_COUNTS)

    stopped = stage1(tiny_data, tmp_path, "fsdp-stopped")
    launch("fsdp2", stopped, tmp_path, "--stop-at", "4")
    assert (tmp_path / "fsdp-stopped" / "checkpoints" / "step-0000004").is_dir()
    assert not (tmp_path / "fsdp-stopped" / "weights.safetensors").exists()
    launch("fsdp2", stopped, tmp_path, "--resume")
    assert_same(weights(fsdp), weights(tmp_path / "fsdp-stopped"))


def test_fsdp2_stage2_lora_matches_one_process(tiny_data, stage1_run, tmp_path):
    one = train(stage2_lora(tiny_data, stage1_run, tmp_path, "one", dropout=0.0, grad_accum=2), progress=False)
    launch("fsdp2", stage2_lora(tiny_data, stage1_run, tmp_path, "fsdp", dropout=0.0), tmp_path)
    trained = weights(tmp_path / "fsdp")
    assert any("lora_" in k for k in trained) and any(k.startswith("projectors.") for k in trained)
    assert_same(weights(one.run_dir), trained, **ACROSS_PROCESS_COUNTS)


def test_fsdp2_stage2_resume_with_lora_dropout_is_bit_exact(tiny_data, stage1_run, tmp_path):
    """Each process draws its own dropout masks: its RNG state is in the checkpoint."""
    launch("fsdp2", stage2_lora(tiny_data, stage1_run, tmp_path, "straight", dropout=0.1), tmp_path)
    stopped = stage2_lora(tiny_data, stage1_run, tmp_path, "stopped", dropout=0.1)
    launch("fsdp2", stopped, tmp_path, "--stop-at", "3")
    launch("fsdp2", stopped, tmp_path, "--resume")
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))


def test_ddp_resume_is_bit_exact(tiny_data, stage1_run, tmp_path):
    launch("ddp", stage2_lora(tiny_data, stage1_run, tmp_path, "straight", dropout=0.1), tmp_path)
    stopped = stage2_lora(tiny_data, stage1_run, tmp_path, "stopped", dropout=0.1)
    launch("ddp", stopped, tmp_path, "--sigterm-at", "3")  # rank 1 alone, as step 3 starts: both stop after it
    checkpoint = tmp_path / "stopped" / "checkpoints" / "step-0000003"
    assert {p.name for p in checkpoint.iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"}
    assert not (checkpoint / "model.safetensors").exists()  # the frozen weights are not written again
    launch("ddp", stopped, tmp_path, "--resume")
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))
