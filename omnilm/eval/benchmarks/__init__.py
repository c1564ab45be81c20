"""Standard benchmarks scored as lmms-eval scores them: name -> "module:Class", imported on use."""
from __future__ import annotations

from importlib import import_module

from omnilm.errors import ConfigError

BENCHMARKS = {
    "scienceqa-img": "omnilm.eval.benchmarks.scienceqa_img:ScienceQAImg",
    "textvqa": "omnilm.eval.benchmarks.textvqa:TextVQA",
    "gqa": "omnilm.eval.benchmarks.gqa:GQA",
    "mmbench": "omnilm.eval.benchmarks.mmbench:MMBench",
    "mmmu": "omnilm.eval.benchmarks.mmmu:MMMU",
    "mmstar": "omnilm.eval.benchmarks.mmstar:MMStar",
    "librispeech": "omnilm.eval.benchmarks.librispeech:LibriSpeech",
}


def get_benchmark(name: str):
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(import_module(module), cls)()
