"""Packing: several encoded samples side by side in one row, so a batch carries tokens rather
than padding. Each sample's position ids restart at 0; with no attention mask given,
transformers reads those restarts as sample boundaries (masking_utils.find_packed_sequence_indices)
and builds a block-causal mask for eager and SDPA attention (flash-attention takes them as
varlen boundaries), so no token attends to another sample's. Labels, placeholders and media
stay per sample: media are listed row by row, sample by sample, the order the placeholders
appear in the flattened batch."""
from __future__ import annotations

import torch

from omnilm.core.sample import IGNORE


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the indices of the items in each row, no row over `capacity`
    tokens; within a row and across rows, items keep their input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[index] > capacity:
            raise ValueError(f"item {index} is {lengths[index]} tokens, longer than a row ({capacity})")
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return sorted((sorted(row) for row in rows), key=lambda row: row[0])


def pack(items: list, pad_id: int, capacity: int) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (items in their packed order, input_ids, labels, position_ids), each [rows, width].
    A sample's first label is IGNORE: in a row it would be predicted from the sample before it.
    Padding at a row's end counts as one more sample, so nothing real attends to it."""
    rows = pack_rows([len(it.input_ids) for it in items], capacity)
    width = max(sum(len(items[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(items[i].input_ids)
            ids[r, start:start + n], labels[r, start + 1:start + n] = items[i].input_ids, items[i].labels[1:]
            positions[r, start:start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return [items[i] for row in rows for i in row], ids, labels, positions
