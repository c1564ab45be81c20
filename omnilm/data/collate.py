"""Encoded samples into one batch, padded to the longest or packed several to a row
(omnilm.data.packing); media are concatenated in the order their placeholders appear."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnilm.core.sample import IGNORE
from omnilm.data.packing import pack
from omnilm.data.encoded import Encoded


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor | None  # [B, T]; None when packed (position_ids mark the samples)
    labels: torch.Tensor  # [B, T]
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of [T_i, D] cached features
    skipped: int = 0  # unreadable samples dropped from this batch (data.skip_bad)
    position_ids: torch.Tensor | None = None  # [B, T] packed: restarting at 0 with each sample
    samples: int | None = None  # samples in it, when packing puts several in a row

    def __len__(self) -> int:
        """How many samples it holds (not rows)."""
        return self.input_ids.shape[0] if self.samples is None else self.samples

    def to(self, device) -> "Batch":
        move = lambda d: {m: [t.to(device, non_blocking=True) for t in ts] for m, ts in d.items()}  # noqa: E731
        opt = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(self.input_ids.to(device), opt(self.attention_mask), self.labels.to(device),
                     move(self.media), move(self.features), self.skipped, opt(self.position_ids), self.samples)

    def model_inputs(self) -> dict:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                  "media": self.media, "features": self.features}
        if self.position_ids is not None:
            # A KV cache would make transformers ignore the packing (masking_utils looks for it
            # only without one); training never reads the cache anyway.
            inputs.update(position_ids=self.position_ids, use_cache=False)
        return inputs


def collate(items: list[Encoded | None], pad_id: int, padding_side: str = "right", pack_to: int | None = None) -> Batch:
    """None items (skipped bad samples) are dropped and counted. `pack_to` packs the samples into
    rows of at most that many tokens instead of one padded row each."""
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return Batch(empty, empty, empty, skipped=skipped)
    if pack_to is not None:
        kept, ids, labels, positions = pack(kept, pad_id, pack_to)
        return Batch(ids, None, labels, *_media(kept), skipped, positions, samples=len(kept))
    width = max(len(it.input_ids) for it in kept)
    ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    labels = torch.full((len(kept), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for row, it in enumerate(kept):
        n = len(it.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols], labels[row, cols], mask[row, cols] = it.input_ids, it.labels, 1
    return Batch(ids, mask, labels, *_media(kept), skipped)


def _media(items: list[Encoded]) -> tuple[dict, dict]:
    """Each modality's inputs and cached features, item after item."""
    media: dict = {}
    features: dict = {}
    for it in items:
        for m, xs in it.media.items():
            media.setdefault(m, []).extend(xs)
        for m, fs in it.features.items():
            features.setdefault(m, []).extend(fs)
    return media, features
