"""The suite passes on a machine whose shell sets hub, GPU and proxy variables (an offline cluster)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ISOLATED_ENV

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_CLUSTER_SHELL = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_from_the_shell", "CUDA_VISIBLE_DEVICES": "0",
                         "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def test_no_isolated_variable_reaches_a_test():
    from huggingface_hub import constants

    assert not [name for name in ISOLATED_ENV if name in os.environ]
    assert constants.HF_HUB_OFFLINE is False  # read when huggingface_hub was imported
    assert not Path(constants.HF_TOKEN_PATH).exists()  # a saved login stays out of the tests


def test_tests_pass_with_an_offline_clusters_shell():
    tests = [f"tests/{Path(__file__).name}::test_no_isolated_variable_reaches_a_test",
             "tests/test_export_llava.py::test_push_to_hub_unreachable_hub_fails_before_any_work"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         cwd=ROOT, env={**os.environ, **OFFLINE_CLUSTER_SHELL},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
