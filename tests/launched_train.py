"""Run by the multi-process tests under `accelerate launch`: one training run of a recipe file.

    launched_train.py RECIPE_YAML [--resume] [--stop-at STEP] [--sigterm-at FORWARD] [--gradients FILE]

--stop-at interrupts every process after that optimizer step, as a callback raising
KeyboardInterrupt would (the loop then saves a checkpoint); --sigterm-at sends SIGTERM to rank 1
alone as its FORWARD-th training forward starts (a scheduler's signal reaching one process
first): every process must stop after that same step. Either way the process exits 0 so the
test can go on to --resume. --gradients saves
the gradients rank 0's optimizer sees at each step (after the processes have reduced them).
It ends as `omnilm train` does under a launcher (omnilm/training/launched.py).
"""
import argparse
import faulthandler
import os
import signal

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from omnilm.config import load_recipe
from omnilm.model.omni import OmniLM
from omnilm.training.launched import exit_launched
from omnilm.training.loop import train

# Should a rank still die of a signal, say where: Python's frames and every C++ thread's.
faulthandler.enable()
torch._C._set_print_stack_traces_on_fatal_signal(True)

parser = argparse.ArgumentParser()
parser.add_argument("recipe")
parser.add_argument("--resume", action="store_true")
parser.add_argument("--stop-at", type=int)
parser.add_argument("--sigterm-at", type=int)
parser.add_argument("--gradients")
args = parser.parse_args()
seen = []
if args.gradients:
    register_optimizer_step_pre_hook(lambda optimizer, *_: seen.append(
        [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]))


def stop(state, model):
    if state.step == args.stop_at:
        raise KeyboardInterrupt


if args.sigterm_at and os.environ["RANK"] == "1":
    real_forward, forwards = OmniLM.forward, []

    def forward(self, *inputs, **kwargs):
        forwards.append(None)
        if len(forwards) == args.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_forward(self, *inputs, **kwargs)

    OmniLM.forward = forward

try:
    train(load_recipe(args.recipe), resume=args.resume, progress=False, callbacks=[stop] if args.stop_at else [])
except KeyboardInterrupt:
    pass
if args.gradients and os.environ["RANK"] == "0":  # the process group has ended with the run
    torch.save(seen, args.gradients)
exit_launched(0)
