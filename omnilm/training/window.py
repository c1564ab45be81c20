"""What the optimizer steps since the last log line did, kept where it was made until it is read.

Each step's loss stays a device tensor and the sample counts stay host integers of this process:
reading a device value makes the host wait for the device, and summing over processes is an
all-reduce. `read` does both once, for every step not yet read (at log steps, before a
checkpoint and at the end), instead of twice for every micro-batch."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from omnilm.errors import OmniError


@dataclass
class StepWindow:
    pending: list = field(default_factory=list)  # one 0-dim device tensor per unread step: this process's share
    samples: int = 0  # this process's samples and skipped samples since the last read
    skipped: int = 0
    losses: list = field(default_factory=list)  # the read steps' losses (all processes) since the last log line
    counted: int = 0  # samples (all processes) read since the last log line
    start: float = field(default_factory=time.perf_counter)

    def add_step(self, loss: torch.Tensor, micro_batches: list) -> None:
        """A finished optimizer step: this process's share of its loss, and its micro-batches' samples."""
        self.pending.append(loss)
        self.samples += sum(len(b) for b in micro_batches)
        self.skipped += sum(b.skipped for b in micro_batches)

    def read(self, accelerator, state, train_lr: float) -> None:
        """Sum the unread steps over processes into `losses` and `state`'s counts. A non-finite
        loss stops the run here: the checkpoint that would follow must not hold its weights."""
        if not self.pending and not self.samples and not self.skipped:
            return
        steps = torch.stack(self.pending).float() if self.pending else torch.zeros(0, device=accelerator.device)
        local = torch.cat([steps, torch.tensor([self.samples, self.skipped], dtype=torch.float32, device=steps.device)])
        summed = accelerator.reduce(local, "sum").tolist()  # the one wait for the device
        losses, (samples, skipped) = summed[:-2], summed[-2:]
        first = state.step - len(losses) + 1
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):  # NaN weights would be saved as if all went well
                raise OmniError(f"training diverged: the loss is {loss} at step {first + offset}; "
                                f"stopped without saving it (try a lower train.lr than {train_lr:g})")
        state.samples += int(samples)
        state.skipped += int(skipped)
        self.losses += losses
        self.counted += int(samples)
        self.pending, self.samples, self.skipped = [], 0, 0

    def record(self, state, lr: float) -> dict:
        """The log line of the steps read since the last one; starts the next window."""
        elapsed = time.perf_counter() - self.start
        record = {"step": state.step, "loss": sum(self.losses) / max(len(self.losses), 1), "lr": lr,
                  "samples_per_s": self.counted / max(elapsed, 1e-9), "samples": state.samples,
                  "skipped": state.skipped}
        self.losses, self.counted, self.start = [], 0, time.perf_counter()
        return record
