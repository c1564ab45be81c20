"""data.streaming: micro-batches read from a stream of rows, never the whole data set in memory.

The stream (omnilm.data.hf_source.open_rows) is shuffled through a buffer, split across
processes (datasets.distributed.split_dataset_by_node: whole shards when they divide evenly,
else every world-th row), and read epoch after epoch (set_epoch reshuffles). Each micro-batch
is the next batch_size rows of this process's stream, so micro-batch m always starts at row
m * batch_size: resuming at micro-batch m skips that many rows (read, not decoded) and then
continues with the next unseen one, bit-exactly. (datasets' own state_dict would restart the
shuffle buffer empty, which changes the order after a resume.)

DataLoader workers each read the same stream and decode every num_workers-th micro-batch; the
DataLoader takes them round-robin, so the order does not depend on the number of workers.
"""
from __future__ import annotations

import logging
from itertools import islice

from torch.utils.data import IterableDataset, get_worker_info

from omnilm.config import DataConfig
from omnilm.data.dataset import SampleDataset, describe_bad
from omnilm.data.rows import LOGGED_SKIPS, describe_row_error
from omnilm.core.sample import check_messages
from omnilm.errors import DataError
from omnilm.extras import require

log = logging.getLogger(__name__)


class StreamedBatches(IterableDataset):
    """Collated micro-batches `start` .. `total` of this process's share of the stream."""

    def __init__(self, cfg: DataConfig, dataset: SampleDataset, collate, *, batch_size: int, rank: int, world: int,
                 seed: int, start: int, total: int):
        self.cfg, self.dataset, self.collate = cfg, dataset, collate
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.start, self.total = start, total
        self.named = 0  # skipped rows named in the log so far (per worker process)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.rows()
        next(islice(rows, self.start * self.batch_size, self.start * self.batch_size), None)  # already trained on
        for micro in range(self.start, self.total):
            chunk = list(islice(rows, self.batch_size))
            if micro % workers == worker:
                yield self.collate([self.encode(where, make) for where, make in chunk])

    def rows(self):
        """(where, make sample) for each row of this process's stream, epoch after epoch."""
        from omnilm.data.hf_source import RowConverter, open_rows, read_rows

        split_dataset_by_node = require("datasets.distributed", "data.streaming").split_dataset_by_node

        stream = open_rows(self.cfg)
        if self.cfg.limit is not None:
            stream = stream.take(self.cfg.limit)
        if self.cfg.shuffle_buffer > 1:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world)
        convert = RowConverter(self.cfg, stream.column_names)
        epoch = 0
        while True:
            stream.set_epoch(epoch)
            count = 0
            for count, row in enumerate(read_rows(stream, self.cfg), start=1):
                yield self.where(convert, row, count - 1, epoch), lambda row=row, index=count - 1: convert(row, index)
            if count == 0:
                raise DataError(f"data.path {self.cfg.path!r}: process {self.rank} of {self.world} got no rows "
                                "to stream (fewer rows than processes?)")
            epoch += 1

    def where(self, convert, row: dict, index: int, epoch: int) -> str:
        """A WebDataset row by shard and key; any other by its place in this process's stream
        (after shuffling, not its row in the file)."""
        if row.get("__key__"):
            return convert.where(row, index)
        return f"{self.cfg.path} streamed row #{index} (process {self.rank}, epoch {epoch})"

    def encode(self, where: str, make):
        """One row -> the processor's Encoded, or None when it is bad and data.skip_bad is set
        (the same checks, and the same messages, as a map-style source and SampleDataset)."""
        try:
            sample = make()
            check_messages(sample.messages)
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as err:
            return self._bad(f"{where}: {err if isinstance(err, DataError) else describe_row_error(err)}")
        try:
            return self.dataset.encode(sample)
        except DataError as err:
            return self._bad(f"{where}: {describe_bad(sample, err)}")

    def _bad(self, reason: str):
        if not self.cfg.skip_bad:
            raise DataError(reason + " (set data.skip_bad=true to skip such rows)")
        self.named += 1
        if self.named <= LOGGED_SKIPS:
            log.warning("skipped %s", reason)
        return None
