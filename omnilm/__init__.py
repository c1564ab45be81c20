"""omnilm: build multimodal (text, image, audio -> text) language models.

The public API, importable from here:

    from omnilm import load_recipe, train, load_pretrained, Sample, Message, GenerationSettings, generate

    result = train(load_recipe("configs/tiny-stage1.yaml"))        # a run folder
    model, processor = load_pretrained(result.run_dir)              # OmniLM.from_pretrained + OmniProcessor's
    ask = Sample([Message("user", "<image>\\nWhat colour is it?")], images=["shape.png"])
    print(generate(model, processor, [ask])[0].text)

Each name lives in one module (see PUBLIC); it is imported on first use, so `import omnilm` and
the command line stay quick (torch and transformers load only when needed).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
PUBLIC = {
    "load_recipe": "omnilm.config",              # YAML recipe (+ dotted overrides) -> checked Recipe
    "Recipe": "omnilm.config",
    "OmniLM": "omnilm.model.omni",               # encoders + projectors + any HF causal LM (PreTrainedModel)
    "OmniConfig": "omnilm.model.configuration",  # what an OmniLM is rebuilt from (config.json)
    "OmniProcessor": "omnilm.model.processing",  # tokenizer, template, media -> model inputs
    "build_model": "omnilm.model.build",         # recipe -> (OmniLM, OmniProcessor), untrained parts
    "load_pretrained": "omnilm.model.saved",     # model, run or export folder -> (OmniLM, OmniProcessor)
    "train": "omnilm.training.loop",             # one stage of a recipe -> RunResult
    "Sample": "omnilm.core.sample",              # messages + images + audios
    "Message": "omnilm.core.sample",
    "GenerationSettings": "omnilm.generation_settings",  # sampling, stop strings, seed; bounded
    "generate": "omnilm.generation",             # batched, KV-cached generation
    "stream": "omnilm.generation",               # text pieces as they are generated
    "evaluate": "omnilm.eval.runner",            # VQA accuracy, BLEU/CIDEr or WER over samples
}
__all__ = [*PUBLIC, "__version__"]


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module 'omnilm' has no attribute {name!r}")
    value = getattr(importlib.import_module(PUBLIC[name]), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
