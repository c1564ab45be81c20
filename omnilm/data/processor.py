"""Processor: a Sample -> token ids, labels and media tensors the model can take."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from omnilm.data.chat import IGNORE, get_template, render
from omnilm.data.images import load_image
from omnilm.data.sample import AUDIO_TOKEN, Message, Sample, check_messages
from omnilm.errors import DataError
from omnilm.model.components import ENCODERS
from omnilm.model.projector import llm_tokens

MARKER_AUDIO = re.compile(re.escape(AUDIO_TOKEN))


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [T] long, placeholders negative
    labels: torch.Tensor  # [T] long, IGNORE where nothing is learned
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of cached encoder outputs [T_i, D]
    transcripts: list = field(default_factory=list)  # transcription route: what each audio said


class Processor:
    def __init__(self, tokenizer, template: str, encoders: dict, end_token_ids: dict, max_length: int,
                 system: str | None = None, audio_max_seconds: float = 120.0, audio_route: str = "auto",
                 transcriber_config=None, tokens_per_feature: dict | None = None, allow_special_tokens: bool = False,
                 stack_frames: dict | None = None):
        self.tokenizer = tokenizer
        self.template_name = template
        self.template = get_template(template)
        self.encoders = encoders
        self.end_token_ids = end_token_ids
        self.max_length = max_length
        self.system = system
        self.audio_max_seconds = audio_max_seconds
        self.transcriber_config = transcriber_config
        self.tokens_per_feature = tokens_per_feature or {}  # projectors that expand each feature
        self.stack_frames = stack_frames or {}  # projectors that stack k encoder frames into one token
        # Off: special tokens typed in message text stay text; only the template writes control tokens.
        self.allow_special_tokens = allow_special_tokens
        self._transcriber = None  # loaded on first use: a Whisper model is not small
        if audio_route == "auto":
            audio_route = "native" if "audio" in encoders else "transcribe" if transcriber_config else "none"
        self.audio_route = audio_route
        # Tokenizers that put BOS in front of every encode (Llama-style) get it here too.
        self.add_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]

    @classmethod
    def from_recipe(cls, recipe, tokenizer, encoders) -> "Processor":
        model = recipe.model
        ends = {m: getattr(model, m).end_token_id for m in ("image", "audio") if getattr(model, m) is not None}
        audio_max = model.audio.max_seconds if model.audio is not None else 120.0
        expand = {m: getattr(model, m).projector.tokens_per_feature for m in ends}
        stack = {m: ENCODERS[getattr(model, m).type].stack(getattr(model, m)) for m in ends}
        return cls(tokenizer, recipe.data.template, encoders, ends, recipe.data.max_length,
                   recipe.data.system, audio_max, model.audio_route, model.transcriber, expand,
                   stack_frames=stack)

    def load_media(self, sample: Sample, features: dict | None = None) -> tuple[dict, dict]:
        """Read and preprocess each media item unless its encoder features are given."""
        media, features = {}, dict(features or {})
        for modality, items in (("image", sample.images), ("audio", sample.audios)):
            if not items or modality in features:
                continue
            if modality not in self.encoders:
                hint = " and no transcriber (set model.transcriber)" if modality == "audio" else ""
                raise DataError(f"sample {sample.id or '?'} has {modality} input but the model has no "
                                f"{modality} encoder{hint}")
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
        return {m: [llm_tokens(n, self.stack_frames.get(m, 1), self.tokens_per_feature.get(m, 1)) for n in ns]
                for m, ns in counts.items()}

    def transcriber(self):
        if self._transcriber is None:
            from omnilm.audio.transcribe import make_transcriber
            from omnilm.zoo.registry import is_zoo, zoo_transcriber_folder

            cfg = self.transcriber_config
            path = zoo_transcriber_folder(cfg.name_or_path) if is_zoo(cfg.name_or_path) else cfg.name_or_path
            self._transcriber = make_transcriber(cfg.backend, path, language=cfg.language)
        return self._transcriber

    def transcribe(self, sample: Sample) -> tuple[Sample, list[str]]:
        """The transcription route: each <audio> marker becomes the text Whisper heard."""
        markers = sum(len(MARKER_AUDIO.findall(m.content)) for m in sample.messages)
        if markers != len(sample.audios):
            raise DataError(f"sample {sample.id or '?'}: {len(sample.audios)} audio inputs but {markers} "
                            f"{AUDIO_TOKEN} markers in the text")
        waves = [self._read("audio", a) for a in sample.audios]
        texts = self.transcriber().transcribe_many(waves)
        queue = iter(texts)
        messages = [Message(m.role, MARKER_AUDIO.sub(lambda _: next(queue), m.content)) for m in sample.messages]
        return Sample(messages, list(sample.images), [], sample.id, dict(sample.meta)), texts

    def messages(self, sample: Sample) -> list[Message]:
        if self.system and not any(m.role == "system" for m in sample.messages):
            return [Message("system", self.system), *sample.messages]
        return sample.messages

    def __call__(self, sample: Sample, features: dict | None = None, generation_prompt: bool = False) -> Encoded:
        if not generation_prompt:  # samples built in code skip the sources' row checks
            try:
                check_messages(sample.messages)
            except DataError as err:
                raise DataError(f"sample {sample.id or '?'}: {err}") from None
        transcripts: list[str] = []
        if sample.audios and self.audio_route == "transcribe":
            sample, transcripts = self.transcribe(sample)
        media, features = self.load_media(sample, features)
        try:
            ids, labels = render(self.messages(sample), self.tokenizer, self.template,
                                 self.token_counts(media, features), self.end_token_ids,
                                 generation_prompt=generation_prompt, add_bos=self.add_bos,
                                 special_tokens_in_text=self.allow_special_tokens)
        except DataError as err:
            raise DataError(f"sample {sample.id or '?'}: {err}") from None
        if generation_prompt and not ids:
            raise DataError(f"sample {sample.id or '?'}: the prompt is empty (no text or media, and template "
                            f"{self.template_name!r} adds none); send some text")
        if len(ids) > self.max_length:
            if any(i < 0 for i in ids[self.max_length:]) or generation_prompt:
                raise DataError(f"sample {sample.id or '?'} is {len(ids)} tokens, over max_length={self.max_length}, "
                                "and truncating it would cut media or the prompt")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if not generation_prompt and all(label == IGNORE for label in labels):
            raise DataError(f"sample {sample.id or '?'} has no assistant tokens to learn")
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features, transcripts)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=True)
