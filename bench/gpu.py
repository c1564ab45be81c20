"""Every GPU path in one run, for a machine with an NVIDIA GPU and no hub access (bench/gpu.sh).

Sections, each on its own (one failing does not lose the others; the exit code is 1 if any
failed, and a missing optional package is reported as "missing", not run):
  env              torch, CUDA, the GPUs
  stage1_encoder   stage-1 training, Phi-2-size LLM (random weights) + TinyCLIP-61M-size tower
                   run every step: samples/s, tokens/s, MFU, peak memory beside the estimate
  stage1_cached    the same with cached image features
  stage2_qlora     stage 2, NF4 QLoRA (r=64) at batch 8 x 512 tokens with gradient checkpointing:
                   step time, peak memory (needs bitsandbytes)
  stage2_lora_bf16 the same with a bf16 base instead of NF4
  generation       greedy generation tokens/s at batch 1 and 32
  fsdp2            one `accelerate launch --config_file configs/accelerate/fsdp2.yaml` finetune step
                   on every GPU (1 GPU still runs FSDP2's bf16 and sharding code)
  fsdp2_qlora      the same with LoRA on an NF4 base stored as bf16 (QLoRA under FSDP2)
  zero2, zero3     the same with DeepSpeed, when deepspeed is installed

    bash bench/gpu.sh                      # GPU: the sizes above, JSON to $OMNILM_GPU_JSON or gpu.json
    bash bench/gpu.sh --out /tmp/gpu.json
    bash bench/gpu.sh --dry-run            # CPU, tiny models: checks the script itself (tests/test_gpu_bench.py)
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GIB = 1024**3
PHI2 = {"model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 32, "num_attention_heads": 32, "partial_rotary_factor": 0.4,
        "max_position_embeddings": 2048, "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257}
TINYCLIP_61M = {"model_type": "clip_vision_model", "hidden_size": 640, "intermediate_size": 2560,
                "num_hidden_layers": 12, "num_attention_heads": 10, "image_size": 224, "patch_size": 32}
TINY_LLM = {"model_type": "phi", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 640,
            "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257}
TINY_VIT = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


@dataclass(frozen=True)
class Size:
    llm: dict
    vision: dict
    end_token_id: int
    images: int  # fixture images (two captions each)
    stage1_batch: int
    stage1_steps: int
    stage2_batch: int
    stage2_tokens: int
    stage2_steps: int
    warmup: int  # steps not timed
    new_tokens: int
    generation_batches: tuple
    launch_timeout: int  # seconds for one accelerate launch


FULL = Size(PHI2, TINYCLIP_61M, end_token_id=23893, images=512, stage1_batch=32, stage1_steps=25, stage2_batch=8,
            stage2_tokens=512, stage2_steps=6, warmup=3, new_tokens=64, generation_batches=(1, 32),
            launch_timeout=150)
TINY = Size(TINY_LLM, TINY_VIT, end_token_id=258, images=48, stage1_batch=8, stage1_steps=4, stage2_batch=2,
            stage2_tokens=96, stage2_steps=3, warmup=2, new_tokens=4, generation_batches=(1, 4), launch_timeout=120)
TARGETS = {"stage1_samples_per_s": 300, "qlora_peak_gib": 16}
# Dense bf16 peak of each GPU (TFLOP/s), for MFU; OMNILM_PEAK_TFLOPS overrides. First match wins.
PEAK_TFLOPS = (("H100 PCIe", 756), ("H200", 989), ("H100", 989), ("GH200", 989), ("B200", 2250), ("A100", 312),
               ("L40S", 362), ("A10G", 70), ("L4", 121), ("4090", 165))


class Missing(Exception):
    """An optional package the section needs is not installed."""


class Bench:
    """What the sections share: the device, the sizes, one folder of random base models and data."""

    def __init__(self, size: Size, folder: Path, dry_run: bool):
        self.size, self.folder, self.dry_run = size, folder, dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        self._base = None

    def base(self) -> dict:
        """Random LLM + image tower folders and the fixture data, made once."""
        if self._base is None:
            self._base = _make_base(self)
        return self._base


def _make_base(bench: Bench) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from omnilm.config import load_recipe
    from omnilm.data.fixtures import make_coco
    from omnilm.model.build import materialize_random
    from omnilm.model.tokenizer import BYTES, load_tokenizer

    folder, size = bench.folder / "base", bench.size
    params = dict(size.llm)
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(0)
    with torch.device(bench.device):  # random init on the GPU: seconds, not a minute of CPU
        llm = AutoModelForCausalLM.from_config(config, dtype=bench.dtype)
    llm.save_pretrained(folder / "llm")
    load_tokenizer(BYTES).save_pretrained(folder / "llm")
    del llm
    recipe = load_recipe(ROOT / "configs" / "tiny-stage1.yaml",
                         {"model": {"llm": {"name_or_path": str(folder / "llm"), "random_config": None},
                                    "image": {"random_config": dict(size.vision)}}})
    image = materialize_random(recipe, folder).model.image.name_or_path
    coco = make_coco(bench.folder / "coco", count=size.images)
    return {"llm": str(folder / "llm"), "image": image, "coco": coco, "coco_images": coco.parent.parent / "train2017",
            "llava": _long_llava(bench.folder / "llava.json", coco.parent.parent / "train2017", size.stage2_tokens)}


def _long_llava(path: Path, image_dir: Path, tokens: int) -> Path:
    """LLaVA-format rows whose answers fill `tokens` byte tokens, so every sample is cut to max_length."""
    answer = ("The picture shows one plain shape, drawn in a single colour on a light background. " * 20)[:tokens]
    rows = [{"id": image.stem, "image": image.name, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture in detail."}, {"from": "gpt", "value": answer}]}
        for image in sorted(image_dir.glob("*.jpg"))]
    path.write_text(json.dumps(rows))
    return path


def recipe(bench: Bench, name: str, **sections):
    """A recipe on the bench's base models and data; `sections` override (data=..., train=...)."""
    from omnilm.config import load_recipe

    base, size = bench.base(), bench.size
    overrides = {
        "model": {"llm": {"name_or_path": base["llm"], "random_config": None, "tokenizer": None},
                  "image": {"name_or_path": base["image"], "random_config": None, "end_token_id": size.end_token_id}},
        "data": {"path": str(base["coco"]), "image_dir": str(base["coco_images"]), "max_length": 128,
                 "num_workers": 0 if bench.dry_run else 4},
        "train": {"output_dir": str(bench.folder / name), "batch_size": size.stage1_batch,
                  "max_steps": size.stage1_steps, "save_every": 10**6, "log_every": 10**6, "warmup_steps": 0},
    }
    for section, values in sections.items():
        for key, value in values.items():
            overrides.setdefault(section, {})[key] = value
    return load_recipe(ROOT / "configs" / "tiny-stage1.yaml", overrides)


class StepClock:
    """A train() callback: time and tokens of each optimizer step, and the model's memory estimate."""

    def __init__(self, bench: Bench, recipe):
        self.bench, self.recipe = bench, recipe
        self.marks: list[tuple[float, int, int]] = []  # (time, samples so far, tokens so far)
        self.tokens = 0
        self.estimate = None
        self.llm_params = self.encoder_params = 0

    def __call__(self, state, model):
        if self.bench.device == "cuda":
            torch.cuda.synchronize()
        if self.estimate is None:
            self._first_step(model)
        cfg = self.recipe.train  # state.samples is summed over processes only at log steps: count steps
        self.marks.append((time.perf_counter(), state.step * cfg.batch_size * cfg.grad_accum, self.tokens))

    def _first_step(self, model):
        from omnilm.training.memory import estimate_memory

        cfg = self.recipe.train
        self.estimate = estimate_memory(model, batch_size=cfg.batch_size, seq_len=self.recipe.data.max_length,
                                        gradient_checkpointing=cfg.gradient_checkpointing,
                                        activation_bytes=2 if self.bench.device == "cuda" else None)
        self.llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "embed_tokens" not in n)
        self.encoder_params = sum(p.numel() for p in model.encoders.parameters())
        model.llm.register_forward_pre_hook(self._count_tokens, with_kwargs=True)

    def _count_tokens(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else kwargs["inputs_embeds"].shape[:2].numel()

    def window(self) -> dict:
        """Rates over the steps after the warm-up."""
        (t0, s0, k0), (t1, s1, k1) = self.marks[self.bench.size.warmup - 1], self.marks[-1]
        seconds = t1 - t0
        steps = len(self.marks) - self.bench.size.warmup
        return {"samples_per_s": (s1 - s0) / seconds, "tokens_per_s": (k1 - k0) / seconds,
                "step_s": seconds / steps, "timed_steps": steps}


def timed_train(bench: Bench, run_recipe) -> tuple[dict, StepClock]:
    from omnilm.training.loop import train

    clock = StepClock(bench, run_recipe)
    if bench.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(run_recipe, progress=False, callbacks=[clock])
    result = clock.window()
    result.update(_memory(bench, clock.estimate))
    return result, clock


def _memory(bench: Bench, estimate) -> dict:
    peak = torch.cuda.max_memory_allocated() if bench.device == "cuda" else None
    return {"peak_gib": _round(peak / GIB) if peak is not None else None,
            "estimate_gib": _round(estimate.total / GIB), "estimate": estimate.as_dict()}


def _round(x, digits=3):
    return None if x is None else round(x, digits)


def peak_tflops() -> float | None:
    if os.environ.get("OMNILM_PEAK_TFLOPS"):
        return float(os.environ["OMNILM_PEAK_TFLOPS"])
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)


# ---- sections ----

def section_env(bench: Bench) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "dry_run": bench.dry_run, "gpus": [], "peak_bf16_tflops": peak_tflops()}
    for package in ("transformers", "accelerate", "peft", "bitsandbytes", "deepspeed"):
        info[package] = _version(package)
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gib": _round(props.total_memory / GIB, 1),
                                 "capability": f"{props.major}.{props.minor}"})
        info["bf16"] = torch.cuda.is_bf16_supported()
        info["flash_sdp"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def stage1(bench: Bench, cached: bool) -> dict:
    size = bench.size
    run = recipe(bench, "stage1-cached" if cached else "stage1-encoder")
    extra = {}
    if cached:
        from omnilm.training.cache import cache_features

        start = time.perf_counter()
        cache = cache_features(run, out=str(bench.folder / "features"), batch_size=64, progress=False)
        extra["cache_images_per_s"] = _round(len(cache) / (time.perf_counter() - start), 1)
        run.data.feature_cache = str(cache.folder)
    result, clock = timed_train(bench, run)
    # Stage 1 trains only the projector: forward (2N per token) + gradients to the inputs (2N).
    flops_per_token = 4 * clock.llm_params
    flops = result["tokens_per_s"] * flops_per_token
    if not cached:  # the frozen tower's forward on every image
        patches = (size.vision["image_size"] // size.vision["patch_size"]) ** 2 + 1
        flops += result["samples_per_s"] * 2 * clock.encoder_params * patches
    peak = peak_tflops()
    result.update(extra)
    result.update({"batch": size.stage1_batch, "llm_params": clock.llm_params, "model_tflops": _round(flops / 1e12, 2),
                   "mfu": _round(flops / (peak * 1e12), 4) if peak else None,
                   "mfu_formula": "LLM: 4 x non-embedding params per token (forward + input gradients)"
                                  + ("" if cached else " + tower forward 2 x params per patch"),
                   "target_samples_per_s": TARGETS["stage1_samples_per_s"],
                   "meets_target": result["samples_per_s"] >= TARGETS["stage1_samples_per_s"]})
    for key in ("samples_per_s", "tokens_per_s", "step_s"):
        result[key] = _round(result[key], 2)
    return result


def stage2(bench: Bench, quantization: str) -> dict:
    if quantization == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise Missing("bitsandbytes missing: pip install bitsandbytes to measure NF4 QLoRA")
    size, base = bench.size, bench.base()
    run = recipe(bench, f"stage2-{quantization}",
                 model={"llm": {"name_or_path": base["llm"], "random_config": None, "tokenizer": None,
                                "quantization": quantization,
                                "lora": {"r": 64, "alpha": 16, "dropout": 0.05,
                                         "target_modules": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]}}},
                 data={"source": "llava", "path": str(base["llava"]), "template": "phi",
                       "max_length": size.stage2_tokens},
                 train={"stage": "instruct", "batch_size": size.stage2_batch, "max_steps": size.stage2_steps,
                        "gradient_checkpointing": True, "lr": 2e-4})
    result, _ = timed_train(bench, run)
    result = {key: _round(value, 3) if isinstance(value, float) else value for key, value in result.items()}
    result.update({"batch": size.stage2_batch, "tokens": size.stage2_tokens, "gradient_checkpointing": True})
    if quantization == "nf4":
        result["target_peak_gib"] = TARGETS["qlora_peak_gib"]
        result["meets_target"] = result["peak_gib"] is not None and result["peak_gib"] <= TARGETS["qlora_peak_gib"]
    return result


def section_generation(bench: Bench) -> dict:
    from omnilm.core.sample import Message, Sample
    from omnilm.generation import generate
    from omnilm.generation_settings import GenerationSettings
    from omnilm.model.build import build_model

    size, base = bench.size, bench.base()
    model, processor = build_model(recipe(bench, "generation", data={"template": "plain"}), device=bench.device)
    model.eval()
    image = next(Path(base["coco_images"]).glob("*.jpg"))
    ask = Sample([Message("user", "<image>\nWhat colour is the shape?")], images=[str(image)])
    result = {"new_tokens": size.new_tokens}
    for batch in size.generation_batches:
        config = GenerationSettings(max_new_tokens=size.new_tokens, ignore_eos=True)
        generate(model, processor, [ask] * batch, GenerationSettings(max_new_tokens=2, ignore_eos=True))  # warm-up
        _sync(bench)
        start = time.perf_counter()
        out = generate(model, processor, [ask] * batch, config)
        _sync(bench)
        seconds = time.perf_counter() - start
        made = sum(c.completion_tokens for c in out)
        result[f"batch{batch}_tokens_per_s"] = _round(made / seconds, 1)
        result[f"batch{batch}_seconds"] = _round(seconds, 3)
    return result


def _sync(bench: Bench) -> None:
    if bench.device == "cuda":
        torch.cuda.synchronize()


def launched(bench: Bench, config_name: str, qlora: bool = False) -> dict:
    """One step under `accelerate launch --config_file configs/accelerate/<name>.yaml`: the whole LLM
    fine-tuned, or (qlora) LoRA adapters on an NF4 base. Every GPU; two CPU processes in a dry run."""
    from omnilm.config import save_recipe

    if config_name.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        raise Missing("deepspeed missing: pip install deepspeed to run ZeRO")
    if qlora and importlib.util.find_spec("bitsandbytes") is None:
        raise Missing("bitsandbytes missing: pip install bitsandbytes to run QLoRA under FSDP2")
    processes = torch.cuda.device_count() if not bench.dry_run else 2
    name = config_name + ("-qlora" if qlora else "")
    model = {"llm": {"name_or_path": bench.base()["llm"], "random_config": None, "tokenizer": None,
                     "quantization": "nf4", "lora": {"r": 64, "alpha": 16, "dropout": 0.05}}} if qlora else {}
    run = recipe(bench, name, model=model,
                 train={"stage": "instruct" if qlora else "finetune", "max_steps": 1, "log_every": 1,
                        "batch_size": bench.size.stage2_batch, "gradient_checkpointing": True})
    recipe_file = bench.folder / f"{name}.yaml"
    save_recipe(run, recipe_file)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{config_name}.yaml"), "--num_processes", str(processes),
           "--main_process_port", str(_free_port())]
    cmd += ["-m", "omnilm.cli", "train", str(recipe_file), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONFAULTHANDLER": "1"}  # a rank killed by a signal shows where
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=bench.size.launch_timeout)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:  # a failed rank's own error comes first, the launcher's summary last
        raise RuntimeError(f"accelerate launch exited {done.returncode}:\n{_ends(output)}")
    metrics = [json.loads(line) for line in (Path(run.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    estimate = [line for line in output.splitlines() if "estimated memory per process" in line]
    return {"processes": processes, "seconds": _round(seconds, 1), "loss": metrics[-1]["loss"],
            "peak_gib": metrics[-1].get("peak_memory_gib"), "estimate": estimate[-1] if estimate else None}


def _free_port() -> int:
    """A port no other run is listening on (a fixed one collides with a launch still shutting down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ends(text: str, keep: int = 3000) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}\n[...]\n{text[-keep:]}"


SECTIONS = {
    "env": section_env,
    "stage1_encoder": lambda bench: stage1(bench, cached=False),
    "stage1_cached": lambda bench: stage1(bench, cached=True),
    "stage2_qlora": lambda bench: stage2(bench, "nf4"),
    "stage2_lora_bf16": lambda bench: stage2(bench, "none"),
    "generation": section_generation,
    "fsdp2": lambda bench: launched(bench, "fsdp2"),
    "fsdp2_qlora": lambda bench: launched(bench, "fsdp2", qlora=True),
    "zero2": lambda bench: launched(bench, "zero2"),
    "zero3": lambda bench: launched(bench, "zero3"),
}


def run_section(name: str, bench: Bench) -> dict:
    start = time.perf_counter()
    try:
        result = {"status": "ok", **SECTIONS[name](bench)}
    except Missing as err:
        result = {"status": "missing", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - one section's failure must not lose the others
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result["section_s"] = _round(time.perf_counter() - start, 1)
    gc.collect()
    if bench.device == "cuda":
        torch.cuda.empty_cache()
    return result


def summary_line(name: str, result: dict) -> str:
    """One printed line per section, the measured figure beside its target and estimate."""
    if result["status"] != "ok":
        return f"{name:<17} {result['status'].upper()}: {result['error'].splitlines()[0]}"
    if name.startswith("stage1"):
        return (f"{name:<17} {result['samples_per_s']} samples/s (target >= {result['target_samples_per_s']}), "
                f"{result['tokens_per_s']} tokens/s, MFU {result['mfu']}, peak {result['peak_gib']} GiB "
                f"(estimate {result['estimate_gib']} GiB)")
    if name.startswith("stage2"):
        target = f" (target <= {result['target_peak_gib']} GiB)" if "target_peak_gib" in result else ""
        return (f"{name:<17} {result['step_s']} s/step, peak {result['peak_gib']} GiB{target} "
                f"(estimate {result['estimate_gib']} GiB)")
    if name == "generation":
        return f"{name:<17} " + ", ".join(f"{k} {v}" for k, v in result.items() if k.endswith("tokens_per_s"))
    if name in ("fsdp2", "fsdp2_qlora", "zero2", "zero3"):
        return f"{name:<17} {result['processes']} process(es), loss {result['loss']:.4f}, peak {result['peak_gib']} GiB"
    return f"{name:<17} ok"


def quiet_libraries() -> None:
    """Progress bars and advice from transformers would bury the summary lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OMNILM_GPU_JSON", "gpu.json"),
                        help="where the JSON goes (default: $OMNILM_GPU_JSON, else gpu.json)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the script, not the GPU")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"bench/gpu.py: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "this benchmark needs an NVIDIA GPU. Use --dry-run to check the script on a CPU.", file=sys.stderr)
        return 2
    quiet_libraries()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "sections": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="omnilm-gpu-") as tmp:
        bench = Bench(TINY if args.dry_run else FULL, Path(tmp), args.dry_run)
        for name in args.only or SECTIONS:
            result = run_section(name, bench)
            report["sections"][name] = result
            print(summary_line(name, result), flush=True)
            write_report(report, out)  # after every section: a run cut short keeps what it measured
    report["done"] = True
    text = write_report(report, out)
    print(text)
    print(f"wrote {out}; " + (f"FAILED: {', '.join(report['failed'])}" if report["failed"] else "no section failed"))
    return 1 if report["failed"] else 0


def write_report(report: dict, out: Path) -> str:
    report["failed"] = [name for name, result in report["sections"].items() if result["status"] == "failed"]
    report["missing"] = [name for name, result in report["sections"].items() if result["status"] == "missing"]
    text = json.dumps(report, indent=1)
    out.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
