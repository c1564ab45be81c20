"""The model card every export folder gets (README.md in the Hugging Face format), and the upload.

The card says what the folder holds, which models it was built from, the recipe and data, the
training metrics the run recorded (metrics.jsonl) and how to load and serve it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from omnilm.errors import ConfigError, OmniError

CARD = "README.md"


def _hub_ids(*names) -> list[str]:
    """The names that are hub ids (not local folders): the card's base_model list."""
    from omnilm.model.llava_source import hub_id_shaped

    return [n for n in names if n and not Path(n).exists() and hub_id_shaped(n) and not n.startswith("zoo:")]


def _last_metrics(source: Path | None) -> dict | None:
    file = source / "metrics.jsonl" if source is not None else None
    if file is None or not file.is_file():
        return None
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _parts(recipe) -> list[str]:
    model = recipe.model
    parts = [f"LLM: `{model.llm.name_or_path}`" + (f" with LoRA r={model.llm.lora.r} merged" if model.llm.lora else "")]
    for modality in ("image", "audio"):
        enc = getattr(model, modality)
        if enc is not None:
            parts.append(f"{modality} encoder: {enc.type} `{enc.name_or_path or 'random'}` (layer {enc.layer}), "
                         f"projector `{enc.projector.type}`")
    return parts


def _usage(fmt: str, name: str) -> str:
    if fmt == "gguf":
        return f"""Run it with llama.cpp (put each image or audio part first in a message: that is the
order the model was trained on):

```bash
llama-mtmd-cli -m {name}-f16.gguf --mmproj mmproj-{name}-f16.gguf --image photo.jpg -p "What is in the image?"
llama-server -m {name}-f16.gguf --mmproj mmproj-{name}-f16.gguf --port 8080   # OpenAI-compatible API
ollama create {name} -f Modelfile && ollama run {name}
```

(The file names carry the `--outtype` the folder was written with.)"""
    if fmt == "llava":
        return f"""```python
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in the image?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       images=[image], return_tensors="pt")
print(processor.decode(model.generate(**inputs, max_new_tokens=64)[0, inputs["input_ids"].shape[1]:]))
```

Serve it with vLLM (an OpenAI-compatible API; send the image as an `image_url` part):

```bash
vllm serve {name}
```

Use the chat template (the processor's `apply_chat_template`, or vLLM's chat API): it writes each
image the way the model was trained to see it."""
    return f"""```bash
pip install omnilm
omnilm chat --model {name} --image photo.jpg "What is in the image?"
omnilm serve --model {name}          # OpenAI-compatible API and web app
```"""


def model_card(recipe, fmt: str, name: str, source: Path | None = None) -> str:
    model, data, train = recipe.model, recipe.data, recipe.train
    encoders = [getattr(model, m) for m in ("image", "audio") if getattr(model, m) is not None]
    meta = {"library_name": {"llava": "transformers", "gguf": "gguf"}.get(fmt, "omnilm"),
            "pipeline_tag": "image-text-to-text" if fmt == "llava" else "any-to-any",
            "tags": ["omnilm", "multimodal"] + ([fmt] if fmt in ("llava", "gguf") else [])}
    base = _hub_ids(model.llm.name_or_path, *(e.name_or_path for e in encoders))
    if base:
        meta["base_model"] = base
    metrics = _last_metrics(source)
    recorded = ("\n".join(f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}"
                          for key, value in metrics.items()) if metrics else "No training metrics were recorded.")
    what = {"llava": "a transformers `LlavaForConditionalGeneration` folder (weights, processor, chat template)",
            "gguf": "llama.cpp GGUF files: the text model and its multimodal projector (`mmproj-*.gguf`)",
            }.get(fmt, "an omnilm export folder (`omnilm.load_pretrained`)")
    limit = f" (first {data.limit} samples)" if data.limit else ""
    recipe_yaml = yaml.safe_dump({"model": recipe.to_dict()["model"], "train": recipe.to_dict()["train"]},
                                 sort_keys=False)
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {name}

A multimodal model built with omnilm: {what}. LoRA adapters are
merged into the LLM and a 4-bit base is dequantized, so it loads without peft or bitsandbytes.

## Base models

{chr(10).join(f"- {p}" for p in _parts(recipe))}

## Training

Stage `{train.stage}`, {train.max_steps} steps, batch {train.batch_size} x {train.grad_accum}, lr {train.lr:g},
prompt template `{data.template}`.

Data: source `{data.source}`{f", `{data.path}`" if data.path else ""}{limit}.

Metrics the run recorded (its last log line):

{recorded}

## Use

{_usage(fmt, name)}

## Recipe

```yaml
{recipe_yaml.strip()}
```
"""


def write_model_card(folder: Path, recipe, fmt: str, source: Path | None = None) -> None:
    (Path(folder) / CARD).write_text(model_card(recipe, fmt, Path(folder).name.removesuffix(".tmp"), source))


def hub_preflight(repo: str, option: str = "--push-to-hub", instead: str = "export without --push-to-hub") -> None:
    """Before any work that ends in an upload: the repo name is valid, the hub is reachable and we
    are logged in. `option` names the flag in the error, `instead` what the user can do meanwhile."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalTokenNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"{option} {repo!r}: not a hub repo id (namespace/name): {err}") from None
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        raise OmniError(f"{option} {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; "
                        f"{instead} and upload the folder later (`hf upload`)")
    try:
        HfApi().whoami()
    except LocalTokenNotFoundError:
        raise OmniError(f"{option} {repo}: not logged in to the Hugging Face hub; run `hf auth login` "
                        "or set HF_TOKEN") from None
    except HfHubHTTPError as err:
        raise OmniError(f"{option} {repo}: the hub refused the token: {err}") from None
    except Exception as err:  # the HTTP client's connection errors: no route, DNS, refused, timeout
        raise OmniError(f"{option} {repo}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                        f"({err}); {instead} and upload the folder later") from None


def push_folder(folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo).commit_url
