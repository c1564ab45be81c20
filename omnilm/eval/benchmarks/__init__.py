"""The benchmarks `omnilm eval --benchmark` knows, as "module:Class" names resolved on use
(so listing them imports nothing, and eval never imports a task module at import time)."""
from __future__ import annotations

from importlib import import_module

from omnilm.errors import ConfigError
from omnilm.eval.benchmarks.spec import Benchmark, Item

BENCHMARKS = {
    "pope": "omnilm.eval.benchmarks.pope:Pope",
    "mme": "omnilm.eval.benchmarks.mme:MME",
    "scienceqa-img": "omnilm.eval.benchmarks.scienceqa_img:ScienceQAImg",
    "textvqa": "omnilm.eval.benchmarks.textvqa:TextVQA",
    "gqa": "omnilm.eval.benchmarks.gqa:GQA",
    "mmbench": "omnilm.eval.benchmarks.mmbench:MMBench",
    "mmmu": "omnilm.eval.benchmarks.mmmu:MMMU",
    "mmstar": "omnilm.eval.benchmarks.mmstar:MMStar",
    "librispeech": "omnilm.eval.benchmarks.librispeech:LibriSpeech",
    "easyvqa": "omnilm.tasks.easyvqa.benchmark:EasyVQA",  # with its task: eval never imports one,
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, ready to use."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(import_module(module), cls)()


__all__ = ["BENCHMARKS", "Benchmark", "Item", "get_benchmark"]
