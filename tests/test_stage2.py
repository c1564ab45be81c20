"""Stage 2: QLoRA instruction tuning from a stage-1 run, the seed's parameter count, export."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PhiConfig

from omnilm.cli import main
from omnilm.config import load_recipe
from omnilm.data.collate import collate
from omnilm.data.sources import load_samples
from omnilm.model.saved import load_pretrained, load_run
from omnilm.training.loop import train
from tests.conftest import CONFIGS, tiny_recipe

SEED_LORA = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


def test_seed_qlora_parameter_count_on_phi2_architecture():
    """LoRA r=64 on Phi-2's q/k/v/dense/fc1/fc2: 94,371,840 adapter parameters of 2,874,055,680."""
    config = PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4,
                       max_position_embeddings=2048)
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config),
                               LoraConfig(r=64, lora_alpha=16, target_modules=SEED_LORA, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (94_371_840, 2_874_055_680)


@pytest.fixture(scope="module")
def stage1_run(tiny_data, tmp_path_factory):
    recipe = tiny_recipe(tiny_data, tmp_path_factory.mktemp("s1"), train={"max_steps": 3, "save_every": 100})
    return train(recipe, progress=False).run_dir


def stage2_recipe(tiny_data, stage1_run, tmp_path, **train_cfg):
    return load_recipe(CONFIGS / "tiny-stage2.yaml", {
        "model": {"init_from": str(stage1_run), "llm": {"name_or_path": str(stage1_run / "base" / "llm")},
                  "image": {"name_or_path": str(stage1_run / "base" / "image_encoder")}},
        "data": {"path": str(tiny_data["llava"]), "image_dir": str(tiny_data["llava_images"])},
        "train": {"output_dir": str(tmp_path / "s2"), "max_steps": 4, "save_every": 2, "log_every": 1,
                  **train_cfg}})


def test_qlora_stage2_starts_from_stage1_and_trains_adapters_and_projector(tiny_data, stage1_run, tmp_path):
    recipe = stage2_recipe(tiny_data, stage1_run, tmp_path)
    before, _ = load_pretrained(stage1_run)
    result = train(recipe, progress=False)
    after, _ = load_run(result.run_dir)  # the model as it trained: 4-bit base, adapters
    assert type(after.llm).__name__.startswith("Peft")
    saved = load_file(str(result.run_dir / "weights.safetensors"))
    assert any("lora_A" in k for k in saved) and any(k.startswith("projectors.image") for k in saved)
    assert not any("lora_" not in k and k.startswith("llm.") for k in saved)  # the base stays frozen
    w0 = dict(before.named_parameters())["projectors.image.proj.weight"]
    w1 = dict(after.named_parameters())["projectors.image.proj.weight"]
    assert not torch.equal(w0, w1)  # started from stage 1 and moved on
    # 4-bit base: linear weights are bitsandbytes Params4bit
    assert any(getattr(p, "quant_state", None) is not None for p in after.llm.parameters())
    # the run's model folder holds the same model with LoRA merged into the dequantized base
    merged, processor = load_pretrained(result.run_dir)
    assert not hasattr(merged.llm, "get_base_model") and not any(hasattr(p, "quant_state") for p in merged.parameters())
    batch = collate([processor(s) for s in load_samples(recipe.data).samples[:2]], processor.tokenizer.pad_token_id)
    inputs = {k: v for k, v in batch.model_inputs().items() if k != "labels"}
    with torch.no_grad():
        expected, got = after(**inputs).logits, merged(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


def test_train_after_eval_works_with_4bit_on_cpu(tiny_data, stage1_run, tmp_path):
    """bitsandbytes repacks 4-bit weights after an eval pass on some CPUs; training must go on."""
    from omnilm.model.build import build_model
    from omnilm.training.stages import apply_stage

    recipe = stage2_recipe(tiny_data, stage1_run, tmp_path)
    model, processor = build_model(recipe)
    apply_stage(model, "instruct")
    samples = load_samples(recipe.data).samples[:4]
    batch = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for phase in ("train", "eval", "train", "eval", "train"):
        if phase == "eval":
            with torch.no_grad():
                model.eval()(**batch.model_inputs())
            continue
        loss = model.train()(**batch.model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert torch.isfinite(loss)


def test_stage2_resume_with_lora_dropout_is_bit_exact(tiny_data, stage1_run, tmp_path):
    """LoRA dropout draws from torch's global RNG: the checkpoint restores it and nothing else
    (such as building the data loader) draws from it, so a resumed run matches a straight one."""
    straight_recipe = stage2_recipe(tiny_data, stage1_run, tmp_path / "straight")
    assert straight_recipe.model.llm.lora.dropout > 0
    straight = train(straight_recipe, progress=False)

    def stop(state, model):
        if state.step == 3:
            raise KeyboardInterrupt

    recipe = stage2_recipe(tiny_data, stage1_run, tmp_path / "stopped")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[stop])
    resumed = train(recipe, progress=False, resume=True)
    assert resumed.state.step == 4
    a = load_file(str(straight.run_dir / "weights.safetensors"))
    b = load_file(str(resumed.run_dir / "weights.safetensors"))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_export_merges_lora_into_a_plain_model_with_the_same_outputs(tiny_data, stage1_run, tmp_path, capsys):
    run = train(stage2_recipe(tiny_data, stage1_run, tmp_path), progress=False).run_dir
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "export")]) == 0
    (qlora, processor), (exported, _) = load_pretrained(run), load_pretrained(tmp_path / "export")
    assert type(exported.llm).__name__ == "PhiForCausalLM"  # no peft, no 4-bit
    assert not any(getattr(p, "quant_state", None) is not None for p in exported.parameters())
    samples = load_samples(qlora.recipe.data).samples[:4]
    batch = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        a, b = qlora(**batch.model_inputs()).logits, exported(**batch.model_inputs()).logits
    # Stated tolerance: merged fp32 weights vs 4-bit kernel + LoRA path, logits within 1e-3.
    assert (a - b).abs().max().item() < 1e-3


def test_finetune_stage_trains_the_llm_and_later_runs_keep_it(tiny_data, stage1_run, tmp_path):
    """`finetune` trains every LLM weight; a run built on it with the LLM frozen (`align`) still
    saves that LLM, so each run folder loads as the whole model it trained."""
    base = {"model": {"init_from": str(stage1_run), "llm": {"name_or_path": str(stage1_run / "base" / "llm")},
                      "image": {"name_or_path": str(stage1_run / "base" / "image_encoder")}}}
    tuned = train(tiny_recipe(tiny_data, tmp_path / "ft", **base,
                              train={"stage": "finetune", "max_steps": 3, "lr": 1e-2}), progress=False).run_dir
    original = dict(load_pretrained(stage1_run)[0].llm.named_parameters())
    finetuned = dict(load_pretrained(tuned)[0].llm.named_parameters())
    assert any(not torch.equal(original[k], v) for k, v in finetuned.items())  # the LLM itself moved
    saved = load_file(str(tuned / "weights.safetensors"))
    assert sum(k.startswith("llm.") for k in saved) == len(finetuned)  # every LLM weight trained and saved

    base["model"]["init_from"] = str(tuned)
    frozen = train(tiny_recipe(tiny_data, tmp_path / "after", **base, train={"max_steps": 2}), progress=False).run_dir
    again = dict(load_pretrained(frozen)[0].llm.named_parameters())
    assert all(torch.equal(finetuned[k], again[k]) for k in finetuned)  # the fine-tuned LLM, not the base
