"""Generation speed: llama.cpp (`llama-server` over `omnilm export --format gguf`) vs omnilm, same model.

The model: SmolLM2-135M-Instruct's real weights (zoo) with a random SigLIP tower and mlp projector
(speed does not depend on what the weights learned). One prompt (an image + a question), EOS
ignored so both make exactly N new tokens, greedy, both on --threads CPU threads. llama.cpp's
figure is its own timing of the decode phase (`timings.predicted_per_second`) and of the prompt
phase (image encoding included); omnilm's is `generate` end to end (tokenizing, image preprocessing,
the tower, prefill and decode). Each is the best of --repeats runs, interleaved. Run:

    .venv/bin/python bench/gguf_speed.py --outtype f32 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnilm.config import load_recipe, save_recipe  # noqa: E402
from omnilm.core.sample import Message, Sample  # noqa: E402
from omnilm.data.fixtures import draw_shape  # noqa: E402
from omnilm.generation import generate  # noqa: E402
from omnilm.generation_settings import GenerationSettings  # noqa: E402
from omnilm.model.build import build_model, materialize_random, portable  # noqa: E402
from omnilm.model.checkpoint import save_trained_weights  # noqa: E402
from omnilm.model.export import export  # noqa: E402
from omnilm.model.saved import RECIPE_FILE, load_pretrained  # noqa: E402
from tests.llama_server import image_part, llama_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What colour is the shape?"
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 6,
          "num_attention_heads": 3, "image_size": 224, "patch_size": 16}


def build_run(folder: Path) -> Path:
    overrides = {"data": {"template": "chat", "max_length": 512},
                 "model": {"llm": {"name_or_path": "zoo:smollm2-135m-instruct", "tokenizer": None,
                                   "random_config": None},
                           "image": {"type": "siglip", "random_config": SIGLIP, "layer": -2, "end_token_id": None,
                                     "projector": {"type": "mlp2x_gelu"}}}}
    recipe = materialize_random(load_recipe(ROOT / "configs" / "tiny-stage1.yaml", overrides), folder / "base")
    model, _ = build_model(recipe)
    save_trained_weights(model, folder)
    save_recipe(portable(recipe, folder), folder / RECIPE_FILE)
    return folder


def omnilm_rate(model, processor, image, tokens: int) -> float:
    sample = Sample([Message("user", f"<image>\n{QUESTION}")], images=[image])
    settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    generate(model, processor, [sample], settings)
    return tokens / (time.perf_counter() - start)


def llama_cpp_rates(url: str, image, tokens: int) -> tuple[float, float]:
    """(end-to-end new tokens/s, decode tokens/s) as llama-server times them."""
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": [image_part(image), {"type": "text", "text": QUESTION}]}],
        "temperature": 0, "max_tokens": tokens, "ignore_eos": True, "cache_prompt": False}).json()
    timings = reply["timings"]
    total_ms = timings["prompt_ms"] + timings["predicted_ms"]
    return timings["predicted_n"] / total_ms * 1000, timings["predicted_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--outtype", default="f32", choices=["f32", "f16", "q8_0"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = draw_shape("red", "circle", size=224, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, processor = load_pretrained(build_run(tmp / "run"))
        model.eval()
        export(model, processor, tmp / "gguf", "gguf", outtype=args.outtype)
        name = f"gguf-{args.outtype}"
        ours, theirs, decode = [], [], []
        with llama_server(tmp / "gguf" / f"{name}.gguf", tmp / "gguf" / f"mmproj-{name}.gguf", tmp / "log",
                          threads=args.threads) as url:
            llama_cpp_rates(url, image, 4)  # warm-up, both sides
            omnilm_rate(model, processor, image, 4)
            for _ in range(args.repeats):
                end_to_end, decoding = llama_cpp_rates(url, image, args.tokens)
                theirs.append(end_to_end)
                decode.append(decoding)
                ours.append(omnilm_rate(model, processor, image, args.tokens))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"SmolLM2-135M + SigLIP (6 layers, 196 patches), {args.tokens} new tokens, text GGUF {args.outtype}")
    print(f"omnilm generate:        {max(ours):7.1f} tokens/s end to end")
    print(f"llama.cpp llama-server: {max(theirs):7.1f} tokens/s end to end ({max(decode):.1f} decoding)")
    print(f"ratio llama.cpp / omnilm: {max(theirs) / max(ours):.2f}x end to end")


if __name__ == "__main__":
    main()
