"""bench/gpu.sh: its CPU dry run builds and runs every section at a tiny size, on an install
as bare as the lent GPU machine's (no audio, plotting or serving libraries), and without
CUDA the real run refuses at once."""
import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# Installed here but absent on the GPU machine: importing any of them in the benchmark's path fails.
ABSENT_ON_GPU_MACHINE = ("soundfile", "soxr", "matplotlib", "gradio", "fastapi", "uvicorn", "jiwer", "datasets")


def bare_env(tmp_path) -> dict:
    """A sitecustomize that makes the absent packages unimportable, in every process started."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT_ON_GPU_MACHINE))
    return {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def test_dry_run_runs_every_section_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--out", str(out)],
                          env=bare_env(tmp_path), capture_output=True, text=True, timeout=180)
    report = json.loads(out.read_text()) if out.exists() else {}
    failures = {k: v.get("error") for k, v in report.get("sections", {}).items() if v["status"] == "failed"}
    assert done.returncode == 0, failures or (done.stdout[-3000:] + done.stderr[-3000:])
    sections = report["sections"]
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    for name, result in sections.items():
        expected = "missing" if name.startswith("zero") and not deepspeed else "ok"
        assert result["status"] == expected, (name, result)
    assert report["failed"] == [] and report["done"]
    for name in ("stage1_encoder", "stage1_cached"):
        assert sections[name]["samples_per_s"] > 0 and sections[name]["tokens_per_s"] > sections[name]["samples_per_s"]
        assert sections[name]["estimate"]["total"] > 0
    for name in ("stage2_qlora", "stage2_lora_bf16"):
        assert sections[name]["step_s"] > 0 and sections[name]["timed_steps"] >= 1
    assert sections["generation"]["batch1_tokens_per_s"] > 0 and sections["generation"]["batch4_tokens_per_s"] > 0
    for name in ("fsdp2", "fsdp2_qlora"):  # really sharded: two CPU processes over gloo
        assert sections[name]["processes"] == 2 and sections[name]["loss"] > 0
        assert "estimated memory per process (fsdp, 2 processes)" in sections[name]["estimate"]
    assert "stage1_encoder" in done.stdout and "target >= 300" in done.stdout  # the summary, targets beside figures


def test_without_cuda_the_real_run_refuses_loudly(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--out", str(out)],
                          env=bare_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "--dry-run" in done.stderr
    assert not out.exists()


def test_nf4_without_bitsandbytes_is_one_clear_entry(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", gpu)  # its dataclasses look their module up
    spec.loader.exec_module(gpu)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    result = gpu.run_section("stage2_qlora", gpu.Bench(gpu.TINY, tmp_path, dry_run=True))
    assert result["status"] == "missing" and result["error"].startswith("bitsandbytes missing")
    assert gpu.summary_line("stage2_qlora", result).startswith("stage2_qlora      MISSING: bitsandbytes missing")
