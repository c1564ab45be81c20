"""The training loop end to end: outputs, checkpoint round trip, exact resume, cached features."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from omnilm.data.collate import collate
from omnilm.errors import ConfigError, OmniError
from omnilm.model.saved import load_pretrained
from omnilm.training.cache import cache_features
from omnilm.training.loop import lr_schedule, train
from tests.conftest import tiny_recipe

FAST = {"max_steps": 6, "save_every": 3, "log_every": 1, "batch_size": 4}


def logits_of(loaded, tiny_data):
    from omnilm.data.sources import load_samples

    model, processor = loaded
    samples = load_samples(model.recipe.data).samples[:3]
    batch = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        return model.eval()(**batch.model_inputs()).logits


def test_run_writes_checkpoint_metrics_plot_and_reloads_identically(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, train=FAST)
    trained = {}  # the model as training left it (the callback runs after every step)
    result = train(recipe, progress=False, callbacks=[lambda state, model: trained.update(model=model)])
    run = result.run_dir
    assert (run / "weights.safetensors").is_file() and (run / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "samples_per_s"} <= set(records[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    saved = load_file(str(run / "weights.safetensors"))
    assert saved and all(k.startswith("projectors.image.") for k in saved)

    reloaded = load_pretrained(run)
    as_trained = (trained["model"], reloaded[1])  # the same processor: only the weights may differ
    torch.testing.assert_close(logits_of(reloaded, tiny_data), logits_of(as_trained, tiny_data), rtol=0, atol=0)
    reloaded_proj = dict(reloaded[0].named_parameters())["projectors.image.proj.weight"]
    torch.testing.assert_close(reloaded_proj, saved["projectors.image.proj.weight"], rtol=0, atol=0)


def hand_written_lr(step: int, warmup: int, total: int) -> float:
    """The schedule's factor as omnilm computed it by hand before using torch's schedulers."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@pytest.mark.parametrize("warmup, total", [(0, 10), (1, 10), (5, 30), (3, 3), (100, 5000)])
def test_lr_schedule_gives_the_hand_written_values(warmup, total):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    scheduler = lr_schedule(optimizer, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2e-3 * hand_written_lr(step, warmup, total) for step in range(total)]
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)


def test_resume_after_interrupt_reaches_the_same_weights(tiny_data, tmp_path):
    straight = train(tiny_recipe(tiny_data, tmp_path / "a", train=FAST), progress=False)

    def interrupt(state, model):
        if state.step == 4:
            raise KeyboardInterrupt

    interrupted = tiny_recipe(tiny_data, tmp_path / "b", train=FAST)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False, callbacks=[interrupt])
    assert (interrupted.train.output_dir and not (tmp_path / "b" / "run" / "weights.safetensors").exists())
    with pytest.raises(ConfigError, match="--resume"):
        train(interrupted, progress=False)
    resumed = train(interrupted, progress=False, resume=True)
    assert resumed.state.step == 6 and resumed.state.samples == straight.state.samples
    a = load_file(str(straight.run_dir / "weights.safetensors"))
    b = load_file(str(resumed.run_dir / "weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_cached_features_train_like_the_encoder(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, train=FAST)
    cache = cache_features(recipe, out=str(tmp_path / "cache"), progress=False)
    assert len(cache) == 48 and cache.meta["shape"] == [16, 32]
    plain = train(recipe, progress=False)
    cached = train(tiny_recipe(tiny_data, tmp_path / "c", train=FAST,
                               data={"feature_cache": str(tmp_path / "cache")}), progress=False)
    a = load_file(str(plain.run_dir / "weights.safetensors"))
    b = load_file(str(cached.run_dir / "weights.safetensors"))
    for key in a:  # features stored in float16: close, not bit-equal
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-3)

    other = tiny_recipe(tiny_data, tmp_path / "d", train=FAST, data={"feature_cache": str(tmp_path / "cache")})
    other.model.image.layer = -2
    with pytest.raises(OmniError, match="feature cache .* was made by encoder"):
        train(other, progress=False)
