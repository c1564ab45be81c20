"""The same loop under `accelerate launch` with 2 CPU processes (DDP over gloo)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CONFIGS, ROOT


@pytest.mark.slow  # two processes, each importing torch and building the model
def test_two_process_run_ends_with_identical_projectors(tiny_data, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(ROOT / "tests" / "ddp_train.py"), str(CONFIGS / "tiny-stage1.yaml"),
           str(tiny_data["coco"]), str(tiny_data["coco_images"]), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    final = load_file(str(tmp_path / "weights.safetensors"))
    assert rank0.keys() == rank1.keys() == final.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
        torch.testing.assert_close(rank0[key], final[key], rtol=0, atol=0)
