"""The loss of an optimizer step is the mean over every learned token of the step, however the
step's samples are split into micro-batches, packed rows or processes: answers of 1 to 60
tokens must weigh by their tokens, not by the micro-batch they land in."""
import json
import random

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from omnilm.data.fixtures import make_coco
from omnilm.training.loop import train
from tests.conftest import tiny_recipe
from tests.test_fsdp import launch

STEPS = 2
# fp32 on a CPU: the same token losses summed in another order differ by ~1e-7.
SAME_GRADIENTS = {"rtol": 0, "atol": 1e-5}


@pytest.fixture(scope="module")
def uneven_captions(tmp_path_factory) -> dict:
    """COCO-format captions of 1 to 60 bytes (the byte tokenizer: one learned token a byte, plus EOS)."""
    root = tmp_path_factory.mktemp("uneven")
    path = make_coco(root, count=24)
    data = json.loads(path.read_text())
    pick = random.Random(0)
    for ann in data["annotations"]:
        ann["caption"] = "".join(pick.choice("abcdefgh ") for _ in range(pick.randint(1, 60)))
    path.write_text(json.dumps(data))
    return {"coco": path, "coco_images": root / "train2017"}


def uneven_recipe(data, tmp_path, name: str, **train_values):
    values = {"max_steps": STEPS, "log_every": 1, "save_every": 100, "max_grad_norm": 0.0, "warmup_steps": 0,
              **train_values}
    recipe = tiny_recipe(data, tmp_path, train=values)
    recipe.train.output_dir = str(tmp_path / name)
    return recipe


def step_gradients(recipe) -> list[list[torch.Tensor]]:
    """Every trained parameter's gradient as each optimizer step of `train(recipe)` sees it."""
    seen = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: seen.append(
        [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]))
    try:
        train(recipe, progress=False)
    finally:
        hook.remove()
    return seen


def assert_same_gradients(a, b) -> None:
    assert len(a) == len(b) == STEPS
    for step_a, step_b in zip(a, b):
        assert len(step_a) == len(step_b) and step_a
        for ga, gb in zip(step_a, step_b):
            torch.testing.assert_close(ga, gb, **SAME_GRADIENTS)


def test_accumulated_micro_batches_train_like_one_batch(uneven_captions, tmp_path):
    whole = step_gradients(uneven_recipe(uneven_captions, tmp_path, "whole", batch_size=8))
    split = step_gradients(uneven_recipe(uneven_captions, tmp_path, "split", batch_size=2, grad_accum=4))
    assert_same_gradients(whole, split)


def test_packed_rows_train_like_padded_ones(uneven_captions, tmp_path):
    padded = step_gradients(uneven_recipe(uneven_captions, tmp_path, "padded", batch_size=8))
    packed = uneven_recipe(uneven_captions, tmp_path, "packed", batch_size=4, grad_accum=2)
    packed.data.packing = True
    assert_same_gradients(padded, step_gradients(packed))


@pytest.mark.slow  # two processes under accelerate launch
def test_two_processes_train_like_one(uneven_captions, tmp_path):
    one = step_gradients(uneven_recipe(uneven_captions, tmp_path, "one", batch_size=8))
    grads = tmp_path / "rank0-gradients.pt"
    launch("ddp", uneven_recipe(uneven_captions, tmp_path, "two", batch_size=4), tmp_path, "--gradients", str(grads))
    assert_same_gradients(one, torch.load(grads))
