"""Processor: a Sample -> token ids, labels and media tensors the model can take."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnilm.data.chat import IGNORE, get_template, render
from omnilm.data.images import load_image
from omnilm.data.sample import Message, Sample
from omnilm.errors import DataError


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [T] long, placeholders negative
    labels: torch.Tensor  # [T] long, IGNORE where nothing is learned
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of cached encoder outputs [T_i, D]


class Processor:
    def __init__(self, tokenizer, template: str, encoders: dict, end_token_ids: dict, max_length: int,
                 system: str | None = None, audio_max_seconds: float = 120.0):
        self.tokenizer = tokenizer
        self.template_name = template
        self.template = get_template(template)
        self.encoders = encoders
        self.end_token_ids = end_token_ids
        self.max_length = max_length
        self.system = system
        self.audio_max_seconds = audio_max_seconds
        # Tokenizers that put BOS in front of every encode (Llama-style) get it here too.
        self.add_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]

    @classmethod
    def from_recipe(cls, recipe, tokenizer, encoders) -> "Processor":
        model = recipe.model
        ends = {m: getattr(model, m).end_token_id for m in ("image", "audio") if getattr(model, m) is not None}
        audio_max = model.audio.max_seconds if model.audio is not None else 120.0
        return cls(tokenizer, recipe.data.template, encoders, ends, recipe.data.max_length,
                   recipe.data.system, audio_max)

    def load_media(self, sample: Sample, features: dict | None = None) -> tuple[dict, dict]:
        """Read and preprocess each media item unless its encoder features are given."""
        media, features = {}, dict(features or {})
        for modality, items in (("image", sample.images), ("audio", sample.audios)):
            if not items or modality in features:
                continue
            if modality not in self.encoders:
                raise DataError(f"sample {sample.id or '?'} has {modality} input but the model has no {modality} encoder")
            media[modality] = [self.encoders[modality].preprocess(self._read(modality, item)) for item in items]
        return media, features

    def _read(self, modality: str, item):
        if modality == "image":
            return load_image(item)
        import numpy as np

        from omnilm.data.audio import load_audio

        if isinstance(item, np.ndarray):  # a bare waveform is 16 kHz mono by the Sample contract
            item = (item, 16000)
        return load_audio(item, max_seconds=self.audio_max_seconds)

    def token_counts(self, media: dict, features: dict) -> dict[str, list[int]]:
        counts = {m: [self.encoders[m].num_tokens(x) for x in xs] for m, xs in media.items()}
        counts.update({m: [int(f.shape[0]) for f in fs] for m, fs in features.items()})
        return counts

    def messages(self, sample: Sample) -> list[Message]:
        if self.system and not any(m.role == "system" for m in sample.messages):
            return [Message("system", self.system), *sample.messages]
        return sample.messages

    def __call__(self, sample: Sample, features: dict | None = None, generation_prompt: bool = False) -> Encoded:
        media, features = self.load_media(sample, features)
        try:
            ids, labels = render(self.messages(sample), self.tokenizer, self.template,
                                 self.token_counts(media, features), self.end_token_ids,
                                 generation_prompt=generation_prompt, add_bos=self.add_bos)
        except DataError as err:
            raise DataError(f"sample {sample.id or '?'}: {err}") from None
        if len(ids) > self.max_length:
            if any(i < 0 for i in ids[self.max_length:]) or generation_prompt:
                raise DataError(f"sample {sample.id or '?'} is {len(ids)} tokens, over max_length={self.max_length}, "
                                "and truncating it would cut media or the prompt")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if not generation_prompt and all(label == IGNORE for label in labels):
            raise DataError(f"sample {sample.id or '?'} has no assistant tokens to learn")
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=True)
