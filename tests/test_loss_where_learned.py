"""OmniLM's training loss applies the LM head only where tokens are learned; it must equal the LLM's own."""
from types import SimpleNamespace

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from omnilm.core.sample import IGNORE
from omnilm.data.collate import collate
from omnilm.data.sources import load_samples
from omnilm.model.build import build_model
from omnilm.model.omni import OmniLM
from tests.conftest import tiny_recipe


def test_loss_and_gradients_equal_the_full_logits_ones(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path)
    model, processor = build_model(recipe)
    samples = load_samples(recipe.data).samples[:5]
    inputs = collate([processor(s) for s in samples], processor.tokenizer.pad_token_id).model_inputs()
    assert model.keeps_logits
    out = model(**inputs)
    learned = int((inputs["labels"][:, 1:] != IGNORE).sum())
    assert out.logits.shape[:2] == (1, learned)  # the head ran on the learned rows only
    out.loss.backward()
    grads = [p.grad.clone() for p in model.projectors.parameters()]
    model.zero_grad()

    labels = inputs.pop("labels")
    embeds = model.embed(inputs["input_ids"], inputs["media"], inputs["features"])
    reference = model.llm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=labels).loss
    torch.testing.assert_close(out.loss, reference, atol=1e-5, rtol=1e-5)
    reference.backward()
    for grad, p in zip(grads, model.projectors.parameters()):
        torch.testing.assert_close(grad, p.grad, atol=1e-6, rtol=1e-4)
    assert not model.llm.get_output_embeddings()._forward_pre_hooks  # the row selection is gone after the call


def test_what_the_llm_does_after_its_head_still_applies():
    """Gemma 2 soft-caps its logits after the LM head: selecting rows before the head keeps that."""
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    llm = Gemma2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (3, 9))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 5:], labels[1, 7:], labels[2, 2:4] = ids[0, 5:], ids[1, 7:], ids[2, 2:4]
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    embeds = llm.get_input_embeddings()(ids)
    reference = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    out = OmniLM._loss_where_learned(SimpleNamespace(llm=llm), embeds, mask, labels)
    assert out.logits.abs().max() <= 2.0  # capped
    torch.testing.assert_close(out.loss, reference, atol=1e-5, rtol=1e-5)
