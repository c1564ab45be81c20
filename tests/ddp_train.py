"""Run by test_ddp.py under `accelerate launch` with 2 CPU processes; each rank saves its weights.
It ends as `omnilm train` does under a launcher (omnilm/training/launched.py)."""
import sys

import torch
from safetensors.torch import save_file

from omnilm.config import load_recipe
from omnilm.training.launched import exit_launched
from omnilm.training.loop import train

recipe_file, data_json, image_dir, out_dir = sys.argv[1:5]
recipe = load_recipe(recipe_file, {"data": {"path": data_json, "image_dir": image_dir},
                                   "train": {"output_dir": out_dir, "max_steps": 4, "batch_size": 4,
                                             "save_every": 100, "log_every": 1}})


def dump(state, model):
    if state.step == recipe.train.max_steps:
        rank = torch.distributed.get_rank()
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if n.startswith("projectors.")}
        save_file(weights, f"{out_dir}/rank{rank}.safetensors")


train(recipe, progress=False, callbacks=[dump])
exit_launched(0)
