"""OmniLM's training loss applies the LM head only where tokens are learned; it must equal the LLM's own."""
import torch

from omnilm.data.collate import collate
from omnilm.data.sources import load_samples
from omnilm.model.build import build_model
from tests.conftest import tiny_recipe


def test_loss_equals_the_full_logits_loss(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path)
    model, processor = build_model(recipe)
    samples = load_samples(recipe.data).samples[:5]
    inputs = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id).model_inputs()
    assert model.keeps_logits
    loss = model(**inputs).loss
    labels = inputs.pop("labels")
    embeds = model.embed(inputs["input_ids"], inputs["media"], inputs["features"])
    reference = model.llm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=labels).loss
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    loss.backward()  # gradients flow through the kept positions only
    assert any(p.grad is not None for p in model.projectors.parameters())
