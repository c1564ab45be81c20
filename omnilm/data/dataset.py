"""A map-style dataset over Samples, plus the deterministic, resumable, rank-sharded batch order."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from omnilm.data.rows import LOGGED_SKIPS
from omnilm.data.sample import Sample
from omnilm.errors import DataError

log = logging.getLogger(__name__)


def describe_bad(sample: Sample, err: DataError) -> str:
    """'sample ID: reason'; a media error's reason names the file."""
    name, reason = f"sample {sample.id or '?'}", str(err)
    return reason if reason.startswith((name + ":", name + " ")) else f"{name}: {reason}"


class SampleDataset(Dataset):
    def __init__(self, samples: list[Sample], processor, feature_cache=None, skip_bad: bool = False):
        self.samples, self.processor, self.cache, self.skip_bad = samples, processor, feature_cache, skip_bad
        self.named: set[int] = set()  # skipped samples already named in the log (per worker process)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:
            return self.encode(self.samples[index])
        except DataError as err:
            if not self.skip_bad:
                raise
            self._log_skip(index, err)
            return None  # collate drops and counts it

    def encode(self, sample: Sample):
        """What training reads for one sample (`omnilm data check` reads the same)."""
        features = {"image": [self.cache.get(p) for p in sample.images]} if self.cache and sample.images else None
        return self.processor(sample, features)

    def _log_skip(self, index: int, err: DataError) -> None:
        """Each bad sample is named once, not on every epoch; past LOGGED_SKIPS they are only counted."""
        if index in self.named or len(self.named) > LOGGED_SKIPS:
            return
        self.named.add(index)
        if len(self.named) <= LOGGED_SKIPS:
            log.warning("skipped %s", describe_bad(self.samples[index], err))
        else:
            log.warning("more bad samples skipped: counted, not named (`omnilm data check RECIPE` lists them all)")


class ResumableBatches:
    """Micro-batches of indices for one rank. Epoch e uses permutation(seed, e); each global
    batch of batch_size * world indices is split by rank. Starting at micro-batch `start`
    continues exactly where an interrupted run stopped."""

    def __init__(self, size: int, batch_size: int, world: int, rank: int, seed: int, start: int, total: int):
        self.per_epoch = size // (batch_size * world)
        if self.per_epoch == 0:
            raise DataError(f"dataset has {size} samples, fewer than one global batch "
                            f"({batch_size} x {world} processes)")
        self.size, self.batch_size, self.world, self.rank = size, batch_size, world, rank
        self.seed, self.start, self.total = seed, start, total

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        perm, epoch = None, -1
        for micro in range(self.start, self.total):
            if micro // self.per_epoch != epoch:
                epoch = micro // self.per_epoch
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            offset = (micro % self.per_epoch) * self.batch_size * self.world + self.rank * self.batch_size
            yield perm[offset:offset + self.batch_size].tolist()
