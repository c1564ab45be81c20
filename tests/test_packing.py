"""Packed batches (data.packing): several samples per row, position ids restarting per sample.
A packed batch must train exactly like the same samples padded one to a row: the same per-sample
losses and gradients, and no token may see another sample's tokens."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnilm.core.sample import IGNORE
from omnilm.data.collate import collate
from omnilm.data.packing import pack_rows
from omnilm.data.encoded import Encoded
from omnilm.data.sources import load_samples
from omnilm.model.build import build_model
from omnilm.model.configuration import OmniConfig
from omnilm.model.omni import OmniLM
from tests.conftest import tiny_recipe

PAD = 0
# fp32 on a CPU: the same sums in a different order (one row of 40 vs four of 10) differ by ~1e-6.
TOL = {"atol": 2e-5, "rtol": 2e-5}


def tiny_llama(attention: str) -> OmniLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation=attention)
    return OmniLM(OmniConfig(text_config=config.to_dict()), llm=LlamaForCausalLM(config))


def samples(lengths, seed=0) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, 97, (n,), generator=gen)
        labels = ids.clone()
        labels[: n // 2] = IGNORE  # a prompt, then an answer
        out.append(Encoded(ids, labels))
    return out


def per_sample_logits(model, batch) -> list[torch.Tensor]:
    """Each sample's logits: padded, one a row; packed, cut where its position ids restart
    (rows in order, left to right; the padding at a row's end dropped)."""
    logits = model(**{**batch.model_inputs(), "labels": None}).logits
    if batch.position_ids is None:
        return [logits[r, mask.bool()] for r, mask in enumerate(batch.attention_mask)]
    out = []
    for r, positions in enumerate(batch.position_ids):
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        out += [logits[r, s:e] for s, e in zip(starts, starts[1:]) if (batch.input_ids[r, s:e] != PAD).all()]
    return out


def packed_order(items, capacity) -> list[int]:
    return [i for row in pack_rows([len(it.input_ids) for it in items], capacity) for i in row]


def test_rows_hold_every_item_once_within_capacity():
    lengths = [30, 5, 17, 40, 2, 23, 11, 40]
    rows = pack_rows(lengths, 40)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows)
    assert len(rows) == 5  # 168 tokens: first-fit decreasing needs the minimum, ceil(168 / 40)
    assert rows == sorted(rows) and all(row == sorted(row) for row in rows)
    with pytest.raises(ValueError, match="longer than a row"):
        pack_rows([41], 40)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_per_sample_losses_and_gradients_equal_the_padded_ones(attention):
    model = tiny_llama(attention)
    items = samples([12, 7, 20, 9, 15, 3])
    padded, packed = collate(items, PAD), collate(items, PAD, pack_to=40)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0] and len(packed) == len(items) == 6
    by_sample_padded = per_sample_logits(model, padded)
    by_sample_packed = dict(zip(packed_order(items, 40), per_sample_logits(model, packed)))
    assert len(by_sample_padded) == len(by_sample_packed) == 6
    for i, it in enumerate(items):  # per-sample loss on its own answer tokens
        def loss(logits):
            return torch.nn.functional.cross_entropy(logits[:-1], it.labels[1:], ignore_index=IGNORE)
        torch.testing.assert_close(by_sample_packed[i], by_sample_padded[i], **TOL)
        torch.testing.assert_close(loss(by_sample_packed[i]), loss(by_sample_padded[i]), **TOL)

    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        model(**batch.model_inputs()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TOL, msg=f"gradient of {name}")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_sample_never_sees_another(attention):
    model = tiny_llama(attention).eval()
    items = samples([10, 14, 8])
    batch = collate(items, PAD, pack_to=64)
    assert batch.input_ids.shape[0] == 1  # all three in one row
    before = per_sample_logits(model, batch)
    changed = Encoded(items[1].input_ids.flip(0), items[1].labels)  # the middle sample, rewritten
    after = per_sample_logits(model, collate([items[0], changed, items[2]], PAD, pack_to=64))
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)  # before it: causal anyway
    torch.testing.assert_close(after[2], before[2], **TOL)  # after it: only the block mask keeps it out
    assert (after[1] - before[1]).abs().max() > 1e-2  # the change itself is visible


def test_packed_media_batch_trains_like_the_padded_one(tiny_data, tmp_path):
    """Images (placeholders and the encoder's inputs) stay with their samples inside packed rows."""
    recipe = tiny_recipe(tiny_data, tmp_path)
    model, processor = build_model(recipe)
    items = [processor(s) for s in load_samples(recipe.data).samples[:6]]
    pad = processor.tokenizer.pad_token_id
    padded, packed = collate(items, pad), collate(items, pad, pack_to=recipe.data.max_length)
    assert packed.input_ids.shape[0] < len(items)
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        loss = model.train()(**batch.model_inputs()).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.projectors.parameters()])
    torch.testing.assert_close(losses[1], losses[0], **TOL)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL)


def test_length_grouped_batches_pad_less_cover_the_epoch_and_resume_exactly():
    from omnilm.data.dataset import ResumableBatches

    lengths = torch.randint(10, 500, (400,), generator=torch.Generator().manual_seed(0)).tolist()

    def batches(grouped, start=0):
        return list(ResumableBatches(400, 8, 1, 0, seed=1, start=start, total=50,
                                     lengths=lengths if grouped else None))

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    grouped, plain = batches(True), batches(False)
    assert sorted(i for b in grouped for i in b) == list(range(400))  # one epoch: every sample once
    assert padding(grouped) < padding(plain) / 10
    assert batches(True, start=17) == grouped[17:]
