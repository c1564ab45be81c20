"""A map-style dataset over Samples, plus the deterministic, resumable, rank-sharded batch order
(optionally grouped by length)."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from omnilm.data.feature_cache import media_key
from omnilm.data.rows import LOGGED_SKIPS
from omnilm.core.sample import Sample
from omnilm.errors import DataError

log = logging.getLogger(__name__)
GROUP = 50  # data.group_by_length sorts this many global batches at a time (as transformers' LengthGroupedSampler)


def describe_bad(sample: Sample, err: DataError, index: int | None = None) -> str:
    """'sample ID: reason', or 'sample #INDEX: reason' for a sample without an id (the bare reason
    when no index is given either: the caller names the row); a media error's reason names the file."""
    reason = str(err)
    name = f"sample {sample.id}" if sample.id else f"sample #{index}" if index is not None else None
    return reason if name is None or reason.startswith(name + ":") else f"{name}: {reason}"


class SampleDataset(Dataset):
    def __init__(self, samples: list[Sample], processor, feature_cache=None, skip_bad: bool = False,
                 transcription=None):
        """`transcription`: the transcription route's step before the processor (Sample -> (Sample,
        transcripts)); None passes samples as they are."""
        self.samples, self.processor, self.cache, self.skip_bad = samples, processor, feature_cache, skip_bad
        self.transcription = transcription
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
        if self.transcription is not None:
            sample, _ = self.transcription(sample)
        features = {"image": [self.cache.get(media_key(p)) for p in sample.images]} if self.cache and sample.images else None
        return self.processor(sample, features)

    def _log_skip(self, index: int, err: DataError) -> None:
        """Each bad sample is named once, not on every epoch; past LOGGED_SKIPS they are only counted."""
        if index in self.named or len(self.named) > LOGGED_SKIPS:
            return
        self.named.add(index)
        if len(self.named) <= LOGGED_SKIPS:
            log.warning("skipped %s", describe_bad(self.samples[index], err, index))
        else:
            log.warning("more bad samples skipped: counted, not named (`omnilm data check RECIPE` lists them all)")


def length_key(sample: Sample) -> tuple[int, int]:
    """What orders samples by length without reading media or tokenizing: media items first
    (each is many tokens), then characters of text."""
    return len(sample.images) + len(sample.audios), sum(len(m.content) for m in sample.messages)


class ResumableBatches:
    """Micro-batches of indices for one rank. Epoch e uses permutation(seed, e); each global
    batch of batch_size * world indices is split by rank. Starting at micro-batch `start`
    continues exactly where an interrupted run stopped. With `lengths` (data.group_by_length)
    each run of GROUP global batches of the permutation is sorted by length, cut into global
    batches, and those are shuffled: similar lengths share a batch, padding shrinks."""

    def __init__(self, size: int, batch_size: int, world: int, rank: int, seed: int, start: int, total: int,
                 lengths: list | None = None):
        self.per_epoch = size // (batch_size * world)
        if self.per_epoch == 0:
            raise DataError(f"dataset has {size} samples, fewer than one global batch "
                            f"({batch_size} x {world} processes)")
        self.size, self.batch_size, self.world, self.rank = size, batch_size, world, rank
        self.seed, self.start, self.total, self.lengths = seed, start, total, lengths

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        perm, epoch = None, -1
        for micro in range(self.start, self.total):
            if micro // self.per_epoch != epoch:
                epoch = micro // self.per_epoch
                perm = self.order(epoch)
            offset = (micro % self.per_epoch) * self.batch_size * self.world + self.rank * self.batch_size
            yield perm[offset:offset + self.batch_size].tolist()

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.size, generator=generator)
        if self.lengths is None:
            return perm
        step = self.batch_size * self.world
        grouped = []
        for chunk in perm[: self.per_epoch * step].split(step * GROUP):  # whole global batches only
            ranked = sorted(chunk.tolist(), key=lambda i: self.lengths[i], reverse=True)
            batches = [ranked[b:b + step] for b in range(0, len(ranked), step)]
            grouped += [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]
        return torch.tensor(grouped)
