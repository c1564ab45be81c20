"""Run by the multi-process tests under `accelerate launch`: one training run of a recipe file.

    launched_train.py RECIPE_YAML [--resume] [--stop-at STEP]

--stop-at interrupts every process after that optimizer step, as Ctrl-C would (the loop then
saves a checkpoint); the process exits 0 so the test can go on to --resume. It ends as
`omnilm train` does under a launcher (omnilm/training/launched.py).
"""
import argparse
import faulthandler

import torch

from omnilm.config import load_recipe
from omnilm.training.launched import exit_launched
from omnilm.training.loop import train

# Should a rank still die of a signal, say where: Python's frames and every C++ thread's.
faulthandler.enable()
torch._C._set_print_stack_traces_on_fatal_signal(True)

parser = argparse.ArgumentParser()
parser.add_argument("recipe")
parser.add_argument("--resume", action="store_true")
parser.add_argument("--stop-at", type=int)
args = parser.parse_args()


def stop(state, model):
    if state.step == args.stop_at:
        raise KeyboardInterrupt


try:
    train(load_recipe(args.recipe), resume=args.resume, progress=False, callbacks=[stop] if args.stop_at else [])
except KeyboardInterrupt:
    pass
exit_launched(0)
