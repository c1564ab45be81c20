"""The training data of one run: which samples, in which order, collated how, for how many steps.

A map-style source reads every row up front (bad rows counted) and orders them with
ResumableBatches; data.streaming reads rows as they come (omnilm.data.streaming). Both yield
micro-batch m the same way whenever the run starts at m, which is what makes --resume exact;
data.packing changes only how each micro-batch is collated.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from omnilm.audio.route import Transcription
from omnilm.config import Recipe
from omnilm.data.collate import collate
from omnilm.data.dataset import ResumableBatches, SampleDataset, length_key
from omnilm.data.sources import load_samples
from omnilm.data.streaming import StreamedBatches


@dataclass
class TrainingData:
    recipe: Recipe
    dataset: SampleDataset  # the samples (empty when streaming) and how each is encoded
    collate: partial
    total_steps: int
    summary: str  # for the log
    world: int
    rank: int

    def loader(self, start: int) -> DataLoader:
        """Micro-batches from micro-batch `start` (the checkpoint's TrainState.micro) to the end."""
        cfg, data = self.recipe.train, self.recipe.data
        total = self.total_steps * cfg.grad_accum
        common = dict(num_workers=data.num_workers,
                      # Iterating a DataLoader draws its workers' base seed from `generator`, or else from the
                      # global RNG that dropout uses, which would shift every later mask on resume.
                      generator=torch.Generator().manual_seed(cfg.seed))
        if data.streaming:
            stream: Dataset = StreamedBatches(data, self.dataset, self.collate, batch_size=cfg.batch_size,
                                              rank=self.rank, world=self.world, seed=cfg.seed, start=start, total=total)
            return DataLoader(stream, batch_size=None, **common)
        lengths = [length_key(s) for s in self.dataset.samples] if data.group_by_length else None
        batches = ResumableBatches(len(self.dataset), cfg.batch_size, self.world, self.rank, cfg.seed,
                                   start=start, total=total, lengths=lengths)
        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate, **common)


def training_data(recipe: Recipe, processor, cache, world: int, rank: int) -> TrainingData:
    cfg, data = recipe.train, recipe.data
    pack_to = data.max_length if data.packing else None
    transcription = Transcription.from_model_config(recipe.model)  # the transcription route, before the processor
    collate_fn = partial(collate, pad_id=processor.tokenizer.pad_token_id, pack_to=pack_to)
    if data.streaming:
        dataset = SampleDataset([], processor, cache, data.skip_bad, transcription)
        return TrainingData(recipe, dataset, collate_fn, cfg.max_steps,
                            f"streaming {data.path} ({data.split}), shuffle buffer {data.shuffle_buffer}", world, rank)
    loaded = load_samples(data)
    dataset = SampleDataset(loaded.samples, processor, cache, data.skip_bad, transcription)
    per_epoch = len(dataset) // (cfg.batch_size * world)
    total_steps = cfg.epochs * max(per_epoch // cfg.grad_accum, 1) if cfg.epochs else cfg.max_steps
    summary = f"{len(dataset)} samples ({loaded.skipped} malformed rows skipped)" + "".join(
        f"\n  skipped: {e}" for e in loaded.errors)
    return TrainingData(recipe, dataset, collate_fn, total_steps, summary, world, rank)
