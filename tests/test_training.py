"""The training loop end to end: outputs, checkpoint round trip, exact resume, cached features."""
import json

import pytest
import torch
from safetensors.torch import load_file

from omnilm.data.collate import collate
from omnilm.errors import ConfigError, OmniError
from omnilm.model.build import load_pretrained
from omnilm.train.cache import cache_features
from omnilm.train.loop import train
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
    result = train(recipe, progress=False)
    run = result.run_dir
    assert (run / "weights.safetensors").is_file() and (run / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "samples_per_s"} <= set(records[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    saved = load_file(str(run / "weights.safetensors"))
    assert saved and all(k.startswith("projectors.image.") for k in saved)

    reloaded = load_pretrained(run)
    again = load_pretrained(run)
    torch.testing.assert_close(logits_of(reloaded, tiny_data), logits_of(again, tiny_data), rtol=0, atol=0)
    fresh, _ = load_pretrained(run)
    fresh_proj = dict(fresh.named_parameters())["projectors.image.proj.weight"]
    torch.testing.assert_close(fresh_proj, saved["projectors.image.proj.weight"], rtol=0, atol=0)


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
