"""Generation speed: omnilm (KV cache) vs the seed's no-cache loop vs transformers' LLaVA.

All three run the same random weights: the OmniLM is built with LLaVA's mlp2x_gelu projector,
and a LlavaForConditionalGeneration is assembled from its very modules (vision tower,
projector, language model, LM head), so the three must produce the same greedy tokens; the
script checks that before timing anything. Run:

    .venv/bin/python bench/generation.py --size tiny --repeats 5

Timing: one prompt (an image + a question), EOS ignored so every method makes exactly N new
tokens. omnilm and the no-cache loop are timed end to end from a Sample (tokenizing, image
preprocessing and the vision tower included); LLaVA from ready tensors, which favours it.
Time to first token (TTFT) is when the first new token reaches a streamer. Each figure is the
best of --repeats runs, methods interleaved, which is the least sensitive to other load.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnilm.config import load_recipe  # noqa: E402
from omnilm.data.fixtures import draw_shape  # noqa: E402
from omnilm.core.sample import PLACEHOLDER_IDS, Message, Sample  # noqa: E402
from omnilm.generation import generate, prepare  # noqa: E402
from omnilm.generation_settings import GenerationSettings  # noqa: E402
from omnilm.model.build import build_model  # noqa: E402

LLAVA_IMAGE_TOKEN = 259  # one id past the byte tokenizer's 259: LLaVA needs an image token id in the vocabulary
SIZES = {
    "tiny": {  # the tiny test recipe's shapes
        "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8),  # 16 image tokens
    },
    "small": {
        "llm": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8),
        "vision": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       image_size=64, patch_size=8),  # 64 image tokens
    },
}
# The last row shows where omnilm's margin over stock LLaVA comes from: the same LLaVA call
# under torch.inference_mode, which omnilm.generation enters and transformers' generate does not.
METHODS = ("omnilm", "no-cache loop", "transformers LLaVA", "LLaVA + inference_mode")


def recipe_for(size: str):
    shapes = SIZES[size]
    llm = dict(model_type="phi", vocab_size=LLAVA_IMAGE_TOKEN + 1, max_position_embeddings=1024,
               bos_token_id=256, eos_token_id=256, pad_token_id=257, **shapes["llm"])
    return load_recipe(overrides={
        "model": {
            "llm": {"name_or_path": f"bench-{size}", "tokenizer": "bytes", "random_config": llm},
            "image": {"type": "clip", "random_config": {"model_type": "clip_vision_model", **shapes["vision"]},
                      "drop_cls": True, "end_token_id": 258, "projector": {"type": "mlp2x_gelu"}},
        },
        "data": {"template": "plain", "max_length": 1024},
    })


def llava_from(omni) -> LlavaForConditionalGeneration:
    """A LLaVA whose every weight is the OmniLM's: same tower, projector, language model, head."""
    tower, llm = omni.encoders["image"].tower, omni.llm
    config = LlavaConfig(vision_config=tower.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_index=LLAVA_IMAGE_TOKEN, vision_feature_layer=-1,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    llava = LlavaForConditionalGeneration(config).eval()
    projector = omni.projectors["image"]
    state = {f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()}
    state |= {f"model.language_model.{k}": v for k, v in llm.model.state_dict().items()}
    state |= {"model.multi_modal_projector.linear_1.weight": projector[0].weight,
              "model.multi_modal_projector.linear_1.bias": projector[0].bias,
              "model.multi_modal_projector.linear_2.weight": projector[2].weight,
              "model.multi_modal_projector.linear_2.bias": projector[2].bias,
              "lm_head.weight": llm.lm_head.weight}
    llava.load_state_dict(state, strict=True)
    llava.generation_config.eos_token_id = None  # like ignore_eos: exactly N tokens
    return llava


class FirstToken:
    """A transformers streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


def runners(omni, processor, llava, sample: Sample):
    batch, _ = prepare(omni, processor, [sample])
    llava_inputs = {"input_ids": batch.input_ids.masked_fill(batch.input_ids == PLACEHOLDER_IDS["image"],
                                                             LLAVA_IMAGE_TOKEN),
                    "attention_mask": batch.attention_mask,
                    "pixel_values": torch.stack(batch.media["image"])}
    pad = processor.tokenizer.pad_token_id

    def run_omni(n, streamer, use_cache=True):
        config = GenerationSettings(max_new_tokens=n, ignore_eos=True, use_cache=use_cache)
        out = generate(omni, processor, [sample], config, streamer=streamer)
        return out[0].token_ids

    def run_llava(n, streamer):
        with torch.no_grad():
            out = llava.generate(**llava_inputs, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                                 streamer=streamer)
        return out[0, llava_inputs["input_ids"].shape[1]:].tolist()

    def run_llava_inference_mode(n, streamer):
        with torch.inference_mode():
            return run_llava(n, streamer)

    return {"omnilm": run_omni, "no-cache loop": lambda n, s: run_omni(n, s, use_cache=False),
            "transformers LLaVA": run_llava, "LLaVA + inference_mode": run_llava_inference_mode}


def timed(run, n: int) -> tuple[float, float, list[int]]:
    streamer = FirstToken()
    start = time.perf_counter()
    tokens = run(n, streamer)
    total = time.perf_counter() - start
    if len(tokens) != n:
        raise RuntimeError(f"expected {n} new tokens, got {len(tokens)}")
    return total, streamer.at - start, tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128])
    # One thread by default: on a shared CPU, OpenMP workers spin-waiting for a busy core made
    # multi-threaded timings swing by 10x; one thread gives repeatable numbers.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        omni, processor = build_model(recipe_for(args.size), base_dir=Path(tmp))
    omni.eval()
    with torch.no_grad():
        omni.llm.lm_head.bias.zero_()  # LLaVA's LM head has no bias: zero Phi's so both compute the same
    llava = llava_from(omni)
    size = image_size = omni.encoders["image"].tower.config.image_size
    sample = Sample([Message("user", "<image>\nWhat shape is in this picture, and what colour is it?")],
                    images=[draw_shape("red", "circle", size=size)])
    runs = runners(omni, processor, llava, sample)

    reference = {name: timed(run, 16)[2] for name, run in runs.items()}  # also warms every path up
    same = len({tuple(t) for t in reference.values()}) == 1
    print(f"greedy tokens identical across all methods: {'yes' if same else 'NO'}")
    if not same:
        for name, tokens in reference.items():
            print(f"  {name}: {tokens}")
        return 1

    best: dict = {}
    for n in args.tokens:
        print(f"timing {n} new tokens ...", file=sys.stderr, flush=True)
        for _ in range(args.repeats):
            for name, run in runs.items():
                total, ttft, _ = timed(run, n)
                old = best.get((name, n), (float("inf"), float("inf")))
                best[(name, n)] = (min(old[0], total), min(old[1], ttft))

    llm_cfg = omni.llm.config
    prompt_len = prepare(omni, processor, [sample])[1][0]
    print(f"\nsize {args.size}: Phi hidden {llm_cfg.hidden_size} x {llm_cfg.num_hidden_layers} layers, CLIP "
          f"{image_size}px ({processor.image_tokens} image tokens), prompt {prompt_len} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; "
          f"best of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print("| new tokens | method | tokens/s | TTFT (ms) | tokens/s vs omnilm | TTFT vs omnilm |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in args.tokens:
        base_total, base_ttft = best[("omnilm", n)]
        for name in METHODS:
            total, ttft = best[(name, n)]
            print(f"| {n} | {name} | {n / total:.1f} | {ttft * 1e3:.1f} | "
                  f"{base_total / total:.2f}x | {ttft / base_ttft:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
