"""A launched rank that ends while gloo still holds its tensors: returning normally aborts it at
interpreter shutdown ("terminate called without an active exception", most launches here);
exit_launched ends it with its status and its output intact, every time."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_serve_support import free_port

pytestmark = pytest.mark.slow  # each launch starts two processes that import torch

RANK = """
import sys, torch, torch.distributed as dist
from omnilm.training.launched import exit_launched

dist.init_process_group("gloo")
for _ in range(200):
    dist.all_reduce(torch.ones(100_000), async_op=True)  # the handle and the tensor dropped at once
print(f"rank {dist.get_rank()} done")
exit_launched(int(sys.argv[1]))
"""


def launch(script, status: int) -> subprocess.CompletedProcess:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                           "--tee", "3", str(script), str(status)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_exit_with_work_in_flight_keeps_the_status_and_the_output(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    for _ in range(3):  # without exit_launched, most of these abort
        done = launch(script, 0)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "rank 0 done" in done.stdout and "rank 1 done" in done.stdout
    failed = launch(script, 3)
    assert failed.returncode != 0 and "exitcode  : 3" in failed.stderr
