"""OmniProcessor: a Sample -> token ids, labels and media tensors the model can take.

Built beside the model from the same recipe (omnilm.model.build), never attached to it: the
tokenizer and template, each encoder's media preprocessing and token count, the length limit.
On the transcription route Whisper's text replaces each <audio> marker first (the audio
layer's SpeechToText), before anything is processed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnilm.audio.transcribe import SpeechToText
from omnilm.data.audio import load_sample_audio
from omnilm.data.chat import IGNORE, get_template, render
from omnilm.data.images import load_image
from omnilm.data.markers import media_first
from omnilm.data.sample import Message, Sample, check_messages
from omnilm.errors import DataError, MediaError
from omnilm.model.components import ENCODERS
from omnilm.model.projector import llm_tokens


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [T] long, placeholders negative
    labels: torch.Tensor  # [T] long, IGNORE where nothing is learned
    media: dict = field(default_factory=dict)  # modality -> list of encoder inputs
    features: dict = field(default_factory=dict)  # modality -> list of cached encoder outputs [T_i, D]
    transcripts: list = field(default_factory=list)  # transcription route: what each audio said


class OmniProcessor:
    """A Sample -> model inputs: tokenizer, prompt template, media reading and preprocessing, and
    how many placeholder tokens each item becomes. `processor(sample)` encodes a training sample
    (ids, labels on what the assistant says); `processor.encode_prompt(sample)` a prompt to
    generate from. Built with its OmniLM; neither holds the other."""

    def __init__(self, tokenizer, template: str, encoders: dict, end_token_ids: dict, max_length: int,
                 system: str | None = None, audio_max_seconds: float = 120.0, audio_route: str = "auto",
                 speech_to_text: SpeechToText | None = None, tokens_per_feature: dict | None = None,
                 allow_special_tokens: bool = False, media_first: bool = False, stack_frames: dict | None = None):
        self.tokenizer = tokenizer
        self.template_name = template
        self.template = get_template(template)
        self.encoders = encoders
        self.end_token_ids = end_token_ids
        self.max_length = max_length
        self.system = system
        self.media_first = media_first  # see DataConfig.media_first
        self.audio_max_seconds = audio_max_seconds
        self.speech_to_text = speech_to_text
        self.tokens_per_feature = tokens_per_feature or {}  # projectors that expand each feature
        self.stack_frames = stack_frames or {}  # projectors that stack k encoder frames into one token
        # Off: special tokens typed in message text stay text; only the template writes control tokens.
        self.allow_special_tokens = allow_special_tokens
        if audio_route == "auto":
            audio_route = "native" if "audio" in encoders else "transcribe" if speech_to_text else "none"
        self.audio_route = audio_route
        # Tokenizers that put BOS in front of every encode (Llama-style) get it here too.
        self.add_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]

    @classmethod
    def from_recipe(cls, recipe, tokenizer, encoders) -> "OmniProcessor":
        model = recipe.model
        ends = {m: getattr(model, m).end_token_id for m in ("image", "audio") if getattr(model, m) is not None}
        audio_max = model.audio.max_seconds if model.audio is not None else 120.0
        expand = {m: getattr(model, m).projector.tokens_per_feature for m in ends}
        speech = SpeechToText(model.transcriber, audio_max) if model.transcriber is not None else None
        stack = {m: ENCODERS[getattr(model, m).type].stack(getattr(model, m)) for m in ends}
        return cls(tokenizer, recipe.data.template, encoders, ends, recipe.data.max_length,
                   recipe.data.system, audio_max, model.audio_route, speech, expand,
                   media_first=recipe.data.media_first, stack_frames=stack)

    def load_media(self, sample: Sample, features: dict | None = None) -> tuple[dict, dict]:
        """Read and preprocess each media item unless its encoder features are given."""
        media, features = {}, dict(features or {})
        for modality, items in (("image", sample.images), ("audio", sample.audios)):
            if not items or modality in features:
                continue
            if modality not in self.encoders:
                hint = " and no transcriber (set model.transcriber)" if modality == "audio" else ""
                raise DataError(sample.about(f"{modality} input was given, but the model has no "
                                             f"{modality} encoder{hint}"))
            try:
                media[modality] = [self.encoders[modality].preprocess(self._read(modality, item)) for item in items]
            except MediaError as err:
                raise MediaError(sample.about(str(err))) from None
        return media, features

    def _read(self, modality: str, item):
        return load_image(item) if modality == "image" else load_sample_audio(item, self.audio_max_seconds)

    def token_counts(self, media: dict, features: dict) -> dict[str, list[int]]:
        counts = {m: [self.encoders[m].num_tokens(x) for x in xs] for m, xs in media.items()}
        counts.update({m: [int(f.shape[0]) for f in fs] for m, fs in features.items()})
        return {m: [llm_tokens(n, self.stack_frames.get(m, 1), self.tokens_per_feature.get(m, 1)) for n in ns]
                for m, ns in counts.items()}

    def transcribe(self, sample: Sample) -> tuple[Sample, list[str]]:
        """The transcription route, before any processing: (the sample with text where its audio
        was, what each audio said); any other sample comes back as it is."""
        if sample.audios and self.audio_route == "transcribe":
            return self.speech_to_text(sample)
        return sample, []

    def messages(self, sample: Sample) -> list[Message]:
        messages = sample.messages
        if self.media_first:
            messages = [Message(m.role, media_first(m.content)) if m.role == "user" else m for m in messages]
        if self.system and not any(m.role == "system" for m in messages):
            return [Message("system", self.system), *messages]
        return messages

    def __call__(self, sample: Sample, features: dict | None = None) -> Encoded:
        """A training sample: its conversation checked, labels on what the assistant says, cut to
        max_length where that cuts only text."""
        try:
            check_messages(sample.messages)
        except DataError as err:
            raise DataError(sample.about(str(err))) from None
        sample, transcripts = self.transcribe(sample)
        ids, labels, media, features = self._render(sample, features, generation_prompt=False)
        if len(ids) > self.max_length:
            if any(i < 0 for i in ids[self.max_length:]):
                raise DataError(sample.about(f"{len(ids)} tokens, over max_length={self.max_length}, and "
                                             "truncating would cut media or the prompt"))
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE for label in labels):
            raise DataError(sample.about("no assistant tokens to learn"))
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features, transcripts)

    def encode_prompt(self, sample: Sample, check_length: bool = True) -> Encoded:
        """A prompt for generation, ending with the assistant header; encoded once per request.

        `check_length=False` leaves the length to the caller (the server explains its own limit)."""
        if not sample.messages or sample.messages[-1].role != "user":
            raise DataError(sample.about("a prompt for generation must end with a user message"))
        sample, transcripts = self.transcribe(sample)
        ids, labels, media, features = self._render(sample, None, generation_prompt=True)
        if not ids:
            raise DataError(sample.about(f"the prompt is empty (no text or media, and template "
                                         f"{self.template_name!r} adds none); send some text"))
        if check_length and len(ids) > self.max_length:
            raise DataError(sample.about(f"{len(ids)} tokens, over max_length={self.max_length}, and "
                                         "truncating would cut media or the prompt"))
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features, transcripts)

    def _render(self, sample: Sample, features: dict | None, generation_prompt: bool):
        media, features = self.load_media(sample, features)
        try:
            ids, labels = render(self.messages(sample), self.tokenizer, self.template,
                                 self.token_counts(media, features), self.end_token_ids,
                                 generation_prompt=generation_prompt, add_bos=self.add_bos,
                                 special_tokens_in_text=self.allow_special_tokens)
        except DataError as err:
            raise DataError(sample.about(str(err))) from None
        return ids, labels, media, features

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=True)
