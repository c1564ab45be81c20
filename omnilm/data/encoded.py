"""What the processor makes of one Sample and collate batches: ids, labels, media tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [T] long, placeholders negative
    labels: torch.Tensor  # [T] long, IGNORE where nothing is learned
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of cached encoder outputs [T_i, D]
