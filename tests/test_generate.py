"""Generation engine on the tiny random model: the outputs are gibberish, so every test compares
two ways of producing the same tokens (cached vs uncached, batched vs single, stream vs not)."""
from __future__ import annotations

import threading

import pytest
import torch

from omnilm.config import load_recipe
from omnilm.data.fixtures import draw_shape
from omnilm.core.sample import Message, Sample
from omnilm.errors import ConfigError, DataError
from omnilm.generation import Completion, generate, stream
from omnilm.generation_settings import GenerationSettings
from omnilm.model.build import build_model

RECIPE = "configs/tiny-stage1.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_model(load_recipe(RECIPE), base_dir=tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def model(built):
    return built[0]


@pytest.fixture(scope="module")
def processor(built):
    return built[1]


def ask(text: str, *images) -> Sample:
    return Sample([Message("user", "<image>\n" * len(images) + text)], images=list(images))


@pytest.fixture(scope="module")
def prompts():
    return [
        ask("What is this?", draw_shape("red", "circle")),
        ask("Hello there, how are you doing today? Tell me a story."),
        ask("", draw_shape("blue", "square", seed=3)),
        ask("Hi"),
    ]


def ids(completions: list[Completion]) -> list[list[int]]:
    return [c.token_ids for c in completions]


def test_kv_cache_matches_recomputing_everything(model, processor, prompts):
    cached = generate(model, processor, prompts, GenerationSettings(max_new_tokens=24))
    uncached = generate(model, processor, prompts, GenerationSettings(max_new_tokens=24, use_cache=False))
    assert ids(cached) == ids(uncached)
    assert [c.text for c in cached] == [c.text for c in uncached]


def test_batched_equals_one_by_one(model, processor, prompts):
    batched = generate(model, processor, prompts, GenerationSettings(max_new_tokens=20))
    single = [generate(model, processor, [p], GenerationSettings(max_new_tokens=20))[0] for p in prompts]
    assert ids(batched) == ids(single)
    assert len({c.prompt_tokens for c in batched}) == len(prompts)  # really different lengths
    assert batched[0].prompt_tokens > 16  # 16 image placeholders + end-of-media + text


def test_max_new_tokens_and_lengths(model, processor, prompts):
    out = generate(model, processor, prompts, GenerationSettings(max_new_tokens=7, ignore_eos=True))
    for c in out:
        assert len(c.token_ids) == c.completion_tokens == 7
        assert c.finish_reason == "length"
    for c in generate(model, processor, prompts, GenerationSettings(max_new_tokens=5)):
        assert c.completion_tokens <= 5 and len(c.token_ids) <= 5


def _ascii_stop(text: str) -> str:
    """A character the model produced after a few others (random models have no words);
    an ASCII letter where there is one, so the stop string is one token."""
    return next((ch for ch in text[3:] if ch.isascii() and ch.isalnum()), text[3])


def test_stop_strings_cut_text_and_end_generation(model, processor, prompts):
    config = GenerationSettings(max_new_tokens=40, ignore_eos=True)
    full = generate(model, processor, prompts[:1], config)[0]
    stop = _ascii_stop(full.text)
    config = GenerationSettings(max_new_tokens=40, ignore_eos=True, stop=["\x00never", stop])
    cut = generate(model, processor, prompts[:1], config)[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < 40  # generation really ended, not only the text was cut
    assert cut.token_ids == full.token_ids[: cut.completion_tokens]


def test_stop_string_per_row_in_a_batch(model, processor, prompts):
    full = generate(model, processor, prompts, GenerationSettings(max_new_tokens=30, ignore_eos=True))
    stop = _ascii_stop(full[0].text)
    cut = generate(model, processor, prompts, GenerationSettings(max_new_tokens=30, ignore_eos=True, stop=[stop]))
    for f, c in zip(full, cut):
        expected = f.text.split(stop)[0]
        assert c.text == expected
        assert c.finish_reason == ("stop" if stop in f.text else "length")


def test_eos_ends_a_row(model, processor, prompts, monkeypatch):
    full = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=20, ignore_eos=True))[0]
    eos = full.token_ids[5]
    first = full.token_ids.index(eos)
    monkeypatch.setattr(model.llm.generation_config, "eos_token_id", [processor.tokenizer.eos_token_id, eos])
    for use_cache in (True, False):
        out = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=20, use_cache=use_cache))[0]
        assert out.token_ids == full.token_ids[:first]
        assert out.completion_tokens == first + 1  # the EOS counts as produced
        assert out.finish_reason == "stop"
        ignoring = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=20, use_cache=use_cache,
                                                                 ignore_eos=True))[0]
        assert ignoring.token_ids == full.token_ids and ignoring.finish_reason == "length"


def test_stream_concatenation_equals_generate(model, processor, prompts):
    config = GenerationSettings(max_new_tokens=30)
    for prompt in prompts[:2]:
        pieces = list(stream(model, processor, prompt, config))
        assert "".join(pieces) == generate(model, processor, [prompt], config)[0].text
        assert len(pieces) > 1


def test_stream_honours_stop_strings(model, processor, prompts):
    full = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=40, ignore_eos=True))[0]
    stop = full.text[5:7]  # two characters: exercises holding back a partial match
    config = GenerationSettings(max_new_tokens=40, ignore_eos=True, stop=[stop])
    streamed = "".join(stream(model, processor, prompts[0], config))
    assert streamed == generate(model, processor, prompts[:1], config)[0].text == full.text[: full.text.index(stop)]


def test_stream_closed_early_stops_the_worker(model, processor, prompts):
    steps = []  # one LLM forward per generated token
    hook = model.llm.register_forward_hook(lambda *_: steps.append(1))
    try:
        pieces = stream(model, processor, prompts[0], GenerationSettings(max_new_tokens=100, ignore_eos=True))
        next(pieces)
        closer = threading.Thread(target=pieces.close, daemon=True)  # close() waits for the worker to end
        closer.start()
        closer.join(timeout=60)  # a deadlock fails here instead of hanging the suite; normally milliseconds
        assert not closer.is_alive(), "closing the stream did not return: the worker kept running"
    finally:
        hook.remove()
    assert not any(t.name == "omnilm-generate" and t.is_alive() for t in threading.enumerate())
    assert len(steps) < 100  # it stopped early instead of generating all 100 tokens


def test_seeded_sampling_is_reproducible(model, processor, prompts):
    config = GenerationSettings(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    state = torch.get_rng_state()
    a = generate(model, processor, prompts, config)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone
    b = generate(model, processor, prompts, config)
    c = generate(model, processor, prompts, GenerationSettings(max_new_tokens=20, temperature=1.0, seed=8))
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    uncached = generate(model, processor, prompts, GenerationSettings(**{**config.__dict__, "use_cache": False}))
    assert ids(uncached) == ids(a)  # same processors, same draws


def test_sampling_differs_from_greedy_and_penalty_applies(model, processor, prompts):
    greedy = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=30, ignore_eos=True))[0]
    penalised = generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=30, ignore_eos=True,
                                                               repetition_penalty=5.0))[0]
    # Random tiny models loop quickly; a strong penalty must break the loop.
    assert len(set(penalised.token_ids)) > len(set(greedy.token_ids))


def test_restores_training_mode(model, processor, prompts):
    model.train()
    generate(model, processor, prompts[:1], GenerationSettings(max_new_tokens=2))
    assert model.training
    model.eval()


def test_bad_requests_fail_clearly(model, processor):
    with pytest.raises(DataError, match="end with a user message"):
        generate(model, processor, [Sample([Message("user", "hi"), Message("assistant", "yo")])])
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, processor, [ask("hi")], GenerationSettings(temperature=-1))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        list(stream(model, processor, ask("hi"), GenerationSettings(max_new_tokens=0)))
    assert generate(model, processor, []) == []


def test_replies_never_start_with_whitespace(model, processor, prompts):
    """Templates put a space before the reply, so models learn to start with one (" red"): the
    text that reaches a reader (generate, stream, the server's engine) starts with the reply."""
    from omnilm.serve.engine import Engine

    configs = [GenerationSettings(max_new_tokens=4, temperature=1.0, seed=seed) for seed in range(6)]
    completions = [generate(model, processor, [p], config)[0] for config in configs for p in prompts]  # as streamed
    raw = [processor.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    assert any(r[:1].isspace() for r in raw)  # the case this test is about does occur
    assert all(c.text == r.lstrip() for c, r in zip(completions, raw))
    streamed = ["".join(stream(model, processor, p, config)) for config in configs for p in prompts]
    assert streamed == [c.text for c in completions]
    engine = Engine(model, processor).start()
    try:
        served = []
        for config in configs:
            for p in prompts:
                handle = engine.stream(p, config)
                handle.start_sync()
                served.append("".join(handle))
    finally:
        engine.close()
    assert served == [c.text for c in completions]
