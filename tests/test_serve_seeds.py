"""A request with a `seed` gets the same text whatever the server batches it with (as OpenAI's
`seed` promises for the same request), and the seed still matters."""
from __future__ import annotations

from omnilm.core.sample import Message, Sample
from omnilm.generation_settings import GenerationSettings

SAMPLED = dict(max_new_tokens=24, temperature=1.0, ignore_eos=True)


def ask(text: str) -> Sample:
    return Sample([Message("user", text)])


def text_alone(engine, sample: Sample, config: GenerationSettings) -> str:
    return engine.submit(sample, config).result(timeout=120).text


def test_seeded_request_gets_the_same_text_alone_and_in_a_batch_of_four(engine):
    target, config = ask("What colour is the shape?"), GenerationSettings(seed=7, **SAMPLED)
    alone = text_alone(engine, target, config)
    # A long greedy request keeps the worker busy while the four arrive, so they wait in the queue
    # together and may be batched: the three others share the target's settings (its seed too,
    # which is what let them share a batch), have another seed, or none.
    blocker = engine.submit(ask("keep the worker busy"), GenerationSettings(max_new_tokens=150, temperature=0.0,
                                                                          ignore_eos=True))
    others = [(ask("a"), config), (ask("a longer question than the target's, to pad it on the left"), config),
              (ask("b"), GenerationSettings(seed=8, **SAMPLED)), (ask("c"), GenerationSettings(**SAMPLED))]
    futures = [engine.submit(sample, cfg) for sample, cfg in others[:2]]
    mine = engine.submit(target, config)
    futures += [engine.submit(sample, cfg) for sample, cfg in others[2:]]
    blocker.result(timeout=120)
    assert mine.result(timeout=120).text == alone
    assert all(f.result(timeout=120).text for f in futures)


def test_seeded_request_repeats_and_other_seeds_give_other_text(engine):
    prompt = ask("Describe the image.")
    texts = {seed: text_alone(engine, prompt, GenerationSettings(seed=seed, **SAMPLED)) for seed in range(5)}
    assert text_alone(engine, prompt, GenerationSettings(seed=3, **SAMPLED)) == texts[3]
    assert len(set(texts.values())) > 1, texts
