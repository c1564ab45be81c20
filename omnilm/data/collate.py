"""Pad encoded samples into one batch; media are concatenated in sample order."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnilm.data.chat import IGNORE
from omnilm.data.processor import Encoded


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of [T_i, D] cached features
    skipped: int = 0  # unreadable samples dropped from this batch (data.skip_bad)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        move = lambda d: {m: [t.to(device, non_blocking=True) for t in ts] for m, ts in d.items()}  # noqa: E731
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     move(self.media), move(self.features), self.skipped)

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                "media": self.media, "features": self.features}


def collate(items: list[Encoded | None], pad_id: int, padding_side: str = "right") -> Batch:
    """None items (skipped bad samples) are dropped and counted."""
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return Batch(empty, empty, empty, skipped=skipped)
    width = max(len(it.input_ids) for it in kept)
    ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    labels = torch.full((len(kept), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for row, it in enumerate(kept):
        n = len(it.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols], labels[row, cols], mask[row, cols] = it.input_ids, it.labels, 1
    media: dict = {}
    features: dict = {}
    for it in kept:
        for m, xs in it.media.items():
            media.setdefault(m, []).extend(xs)
        for m, fs in it.features.items():
            features.setdefault(m, []).extend(fs)
    return Batch(ids, mask, labels, media, features, skipped)
