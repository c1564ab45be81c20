"""The memory estimate printed at training start, against a measured peak.

On a CPU there is no allocator statistic like torch.cuda.max_memory_allocated, so the peak is
measured at the tensor level: a TorchDispatchMode adds up the storages every op creates while
they are alive (views share their base's storage and are counted once) across one training
step (forward, backward, AdamW step), on top of the weights and optimizer states that exist
before it."""
import logging
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from omnilm.config import load_recipe
from omnilm.data.collate import collate
from omnilm.data.dataset import SampleDataset
from omnilm.data.sources import load_samples
from omnilm.model.build import build_model
from omnilm.training.loop import train
from omnilm.training.memory import estimate_memory
from omnilm.training.stages import apply_stage
from tests.conftest import CONFIGS, tiny_recipe

SIZES = {"tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
         "small": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8}}


class PeakTensorBytes(TorchDispatchMode):
    """The most bytes of tensor storage made inside the mode that were alive at one time."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.alive: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.alive.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in self.alive and storage.nbytes():
                    self.alive.add(id(storage))
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def model_and_batch(tiny_data, size: str, stage: str, batch_size: int):
    llm = {"model_type": "phi", "vocab_size": 259, "max_position_embeddings": 512, "bos_token_id": 256,
           "eos_token_id": 256, "pad_token_id": 257, **SIZES[size]}
    overrides = {"model": {"llm": {"random_config": llm}},
                 "data": {"path": str(tiny_data["coco"]), "image_dir": str(tiny_data["coco_images"])}}
    if stage == "instruct":  # long multi-turn samples, LoRA adapters training
        overrides["model"]["llm"]["lora"] = {"r": 16, "alpha": 32, "dropout": 0.05}
        overrides["data"] = {"source": "llava", "path": str(tiny_data["llava"]),
                             "image_dir": str(tiny_data["llava_images"]), "template": "phi", "max_length": 160}
    recipe = load_recipe(CONFIGS / "tiny-stage1.yaml", overrides)
    torch.manual_seed(0)
    model, processor = build_model(recipe)
    apply_stage(model, stage)
    dataset = SampleDataset(load_samples(recipe.data).samples, processor, None, False)
    batch = collate([dataset[i] for i in range(batch_size)], pad_id=processor.tokenizer.pad_token_id)
    return model.train(), batch.model_inputs()


def measured_peak(model, inputs) -> int:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    def step():
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer states exist from here on, as in every step but the first
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    before += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    with PeakTensorBytes() as tracker:
        step()
    return before + tracker.peak


@pytest.mark.parametrize("size,stage,checkpointing", [
    ("tiny", "align", False), ("tiny", "instruct", False),
    ("small", "align", False), ("small", "instruct", False), ("small", "instruct", True)])
def test_estimate_is_within_a_quarter_of_the_measured_peak(tiny_data, size, stage, checkpointing):
    model, inputs = model_and_batch(tiny_data, size, stage, batch_size=4)
    if checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch, tokens = inputs["input_ids"].shape
    estimate = estimate_memory(model, batch_size=batch, seq_len=tokens, gradient_checkpointing=checkpointing)
    peak = measured_peak(model, inputs)
    assert 0.75 * peak <= estimate.total <= 1.25 * peak, (estimate, peak)


def test_sharding_divides_what_each_strategy_shards(tiny_data):
    model, _ = model_and_batch(tiny_data, "tiny", "instruct", batch_size=1)
    one = estimate_memory(model, batch_size=4, seq_len=128)
    fsdp = estimate_memory(model, batch_size=4, seq_len=128, strategy="fsdp", processes=4)
    zero2 = estimate_memory(model, batch_size=4, seq_len=128, strategy="zero2", processes=4)
    ddp = estimate_memory(model, batch_size=4, seq_len=128, strategy="ddp", processes=4)
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (one.weights // 4, one.gradients // 4, one.optimizer // 4)
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == (one.weights, one.gradients // 4, one.optimizer // 4)
    assert ddp.total == one.total and fsdp.activations == one.activations
    assert one.optimizer == 2 * one.gradients > 0  # AdamW's two moments
    with pytest.raises(ValueError, match="unknown strategy 'zero1'"):
        estimate_memory(model, batch_size=1, seq_len=8, strategy="zero1")


def test_training_prints_the_estimate_before_the_first_step(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="omnilm.training"):
        train(tiny_recipe(tiny_data, tmp_path, train={"max_steps": 1, "batch_size": 2}), progress=False)
    [line] = [r.getMessage() for r in caplog.records if "estimated memory" in r.getMessage()]
    assert line.startswith("estimated memory per process (single, 1 process): ")
    assert "weights" in line and "activations" in line and "fits a 24 GB card" in line
