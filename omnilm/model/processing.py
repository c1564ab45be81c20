"""OmniProcessor: a Sample -> token ids, labels and media tensors the model can take; weight-free.

A transformers processor (ProcessorMixin): the tokenizer, each encoder's own media preprocessing
(an image processor, Whisper's feature extractor) and its settings (template, length limit,
token-count facts), so `save_pretrained` / `from_pretrained` round-trip with no model weights on
disk. Built beside the model from the same recipe (omnilm.model.build), never attached to it.
Audio on the transcription route is turned into text before it (omnilm.audio.route.Transcription).
"""
from __future__ import annotations

import dataclasses

import torch
from transformers import AutoProcessor, AutoTokenizer, WhisperFeatureExtractor
from transformers.processing_utils import ProcessorMixin

from omnilm.core.components import ENCODERS, llm_tokens
from omnilm.core.sample import IGNORE, Message, Sample, check_messages
from omnilm.data.audio import load_sample_audio
from omnilm.data.chat import get_template, render
from omnilm.data.encoded import Encoded
from omnilm.data.images import load_image
from omnilm.data.markers import media_first
from omnilm.errors import DataError, MediaError
from omnilm.model.audio_features import encoder_frames, real_length_log_mel, window_padded_log_mel
from omnilm.model.configuration import OmniConfig
from omnilm.model.image_processing import CenterCropImageProcessor, SplitImageProcessor
from omnilm.model.tiling import TileFeatures, Tiles, Tiling, grid_of, token_count

MEDIA_PARTS = {"image": "image_processor", "audio": "feature_extractor"}  # modality -> the part that reads it
# Part classes a saved processor may name beyond transformers' own.
OWN_PARTS = {part.__name__: part for part in (CenterCropImageProcessor, SplitImageProcessor)}


class _HeldParts:
    """ProcessorMixin's `get_attributes`, per instance: the class lists every part a processor can
    hold (what loading looks for); an instance lists the parts it holds, so a model without images
    or audio saves and checks no such part."""

    def __get__(self, processor, cls):
        if processor is None:
            return lambda: ["tokenizer", *MEDIA_PARTS.values()]
        return lambda: ["tokenizer", *(p for p in MEDIA_PARTS.values() if getattr(processor, p, None) is not None)]


class OmniProcessor(ProcessorMixin):
    """A Sample -> model inputs: tokenizer, prompt template, media reading and preprocessing, and
    how many placeholder tokens each item becomes. `processor(sample)` encodes a training sample
    (ids, labels on what the assistant says); `processor.encode_prompt(sample)` a prompt to
    generate from. Built with its OmniLM; neither holds the other."""

    get_attributes = _HeldParts()

    def __init__(self, tokenizer, image_processor=None, feature_extractor=None, template: str = "plain",
                 max_length: int = 512, system: str | None = None, media_first: bool = False,
                 end_token_ids: dict | None = None, image_tokens: int | None = None,
                 audio_window_frames: int | None = None, audio_pad_to_window: bool = False, stack_frames: dict | None = None,
                 tokens_per_feature: dict | None = None, pixel_shuffle: dict | None = None, audio_max_seconds: float = 120.0,
                 audio_route: str = "none", transcriber: dict | None = None, allow_special_tokens: bool = False,
                 tiling: dict | None = None, chat_template=None):
        # Set before ProcessorMixin's checks, which ask get_attributes what this instance holds.
        self.image_processor, self.feature_extractor = image_processor, feature_extractor
        parts = {"tokenizer": tokenizer, **{p: getattr(self, p) for p in MEDIA_PARTS.values() if getattr(self, p)}}
        super().__init__(**parts, chat_template=chat_template)
        if feature_extractor is not None and audio_window_frames is None:
            raise DataError("an OmniProcessor with a feature extractor needs audio_window_frames")
        if image_processor is not None and image_tokens is None:
            raise DataError("an OmniProcessor with an image processor needs image_tokens")
        self.template = template
        self.max_length = max_length
        self.system = system
        self.media_first = media_first  # see DataConfig.media_first
        self.end_token_ids = dict(end_token_ids or {})
        self.image_tokens = image_tokens  # feature vectors per image (per tile when tiled)
        self.tiling = tiling  # omnilm.model.tiling.Tiling's settings (what is saved): images cut into tiles
        self.image_tiling = Tiling.from_dict(tiling) if tiling else None  # None: one view per image
        self.audio_window_frames = audio_window_frames  # mel frames per Whisper window
        self.audio_pad_to_window = audio_pad_to_window  # whole windows, as llama.cpp makes them (see EncoderConfig)
        self.stack_frames = dict(stack_frames or {})  # projectors that stack k encoder frames into one token
        self.tokens_per_feature = dict(tokens_per_feature or {})  # projectors that expand each feature
        self.pixel_shuffle = dict(pixel_shuffle or {})  # projectors that merge N x N patches into one token
        self.audio_max_seconds = audio_max_seconds
        self.audio_route = audio_route  # decided from the recipe (omnilm.audio.route.audio_route)
        self.transcriber = transcriber  # TranscriberConfig keys: the Whisper of the transcription route
        # Off: special tokens typed in message text stay text; only the template writes control tokens.
        self.allow_special_tokens = allow_special_tokens
        self._template = get_template(template)
        # Tokenizers that put BOS in front of every encode (Llama-style) get it here too.
        self._add_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]

    @classmethod
    def from_recipe(cls, recipe, tokenizer, preprocessors: dict) -> "OmniProcessor":
        """`preprocessors`: modality -> MediaPreprocessor (omnilm.model.preprocessors), one per encoder."""
        from omnilm.audio.route import audio_route

        model = recipe.model
        encoders = {m: getattr(model, m) for m in MEDIA_PARTS if getattr(model, m) is not None}
        image, audio = preprocessors.get("image"), preprocessors.get("audio")
        return cls(tokenizer, image.part if image else None, audio.part if audio else None,
                   template=recipe.data.template, max_length=recipe.data.max_length, system=recipe.data.system,
                   media_first=recipe.data.media_first,
                   end_token_ids={m: cfg.end_token_id for m, cfg in encoders.items()},
                   image_tokens=image.image_tokens if image else None,
                   tiling=image.tiling.as_dict() if image and image.tiling else None,
                   audio_window_frames=audio.audio_window_frames if audio else None,
                   audio_pad_to_window=model.audio.pad_to_window if model.audio is not None else False,
                   stack_frames={m: ENCODERS[cfg.type].stack(cfg) for m, cfg in encoders.items()},
                   tokens_per_feature={m: cfg.projector.tokens_per_feature for m, cfg in encoders.items()},
                   pixel_shuffle={m: cfg.projector.pixel_shuffle for m, cfg in encoders.items()},
                   audio_max_seconds=model.audio.max_seconds if model.audio is not None else 120.0,
                   audio_route=audio_route(model),
                   transcriber=dataclasses.asdict(model.transcriber) if model.transcriber is not None else None)

    def choose_audio_route(self, route: str | None = None, transcriber=None) -> None:
        """At inference: how audio reaches the model (auto, native, transcribe), and with which
        transcriber (a TranscriberConfig); either left as saved when None."""
        from omnilm.audio.route import decide_route

        if transcriber is not None:
            self.transcriber = dataclasses.asdict(transcriber)
        if route is not None or transcriber is not None:
            self.audio_route = decide_route(route or "auto", self.feature_extractor is not None,
                                            self.transcriber is not None)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The tokenizer from the folder, each media part from its settings in processor_config.json
        (a part the folder's model lacks is None)."""
        kwargs.pop("subfolder", None)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        parts = []
        for name in MEDIA_PARTS.values():
            settings = (processor_dict or {}).get(name)
            if settings is None:
                parts.append(None)
                continue
            type_key = "image_processor_type" if name == "image_processor" else "feature_extractor_type"
            part_class = OWN_PARTS.get(settings.get(type_key)) or cls.get_possibly_dynamic_module(settings[type_key])
            parts.append(part_class(**settings))
        return [tokenizer, *parts]

    def media_part(self, modality: str):
        """The part that preprocesses `modality` (None: the model takes no such input)."""
        return getattr(self, MEDIA_PARTS[modality])

    def preprocess(self, modality: str, item) -> torch.Tensor | Tiles:
        """One read item -> encoder input: pixels [3, S, S], a tiled image's Tiles, or a
        real-length log-mel [n_mels, F]."""
        part = self.media_part(modality)
        if isinstance(part, WhisperFeatureExtractor):
            log_mel = window_padded_log_mel if self.audio_pad_to_window else real_length_log_mel
            return log_mel(part, item, self.audio_window_frames)
        pixels = part(item, return_tensors="pt")["pixel_values"][0]  # [3, S, S], tiled: [n, 3, S, S]
        if self.image_tiling is None:
            return pixels
        return Tiles(pixels, grid_of(self.image_tiling, item.height, item.width))

    def read(self, modality: str, item):
        return load_image(item) if modality == "image" else load_sample_audio(item, self.audio_max_seconds)

    def load_media(self, sample: Sample, features: dict | None = None) -> tuple[dict, dict]:
        """Read and preprocess each media item unless its encoder features are given."""
        media, features = {}, dict(features or {})
        for modality, items in (("image", sample.images), ("audio", sample.audios)):
            if not items or modality in features:
                continue
            if self.media_part(modality) is None:
                hint = " and no transcriber (set model.transcriber)" if modality == "audio" else ""
                raise DataError(sample.about(f"{modality} input was given, but the model has no "
                                             f"{modality} encoder{hint}"))
            try:
                media[modality] = [self.preprocess(modality, self.read(modality, item)) for item in items]
            except MediaError as err:
                raise MediaError(sample.about(str(err))) from None
        return media, features

    def feature_count(self, modality: str, inputs: torch.Tensor) -> int:
        """How many feature vectors the encoder makes of one preprocessed input."""
        return self.image_tokens if modality == "image" else encoder_frames(inputs.shape[-1])

    def item_tokens(self, modality: str, item, cached: bool = False) -> int:
        """How many LLM tokens one preprocessed input (or its cached features) becomes. A tiled
        image's count comes from its grid and already holds what the projector merges."""
        if isinstance(item, (Tiles, TileFeatures)):
            return token_count(self.image_tiling, item.grid)
        features = int(item.shape[0]) if cached else self.feature_count(modality, item)
        return llm_tokens(features, self.stack_frames.get(modality, 1), self.tokens_per_feature.get(modality, 1),
                          self.pixel_shuffle.get(modality, 1))

    def token_counts(self, media: dict, features: dict) -> dict[str, list[int]]:
        counts = {m: [self.item_tokens(m, x) for x in xs] for m, xs in media.items()}
        counts.update({m: [self.item_tokens(m, f, cached=True) for f in fs] for m, fs in features.items()})
        return counts

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
        ids, labels, media, features = self._render(sample, features, generation_prompt=False)
        if len(ids) > self.max_length:
            if any(i < 0 for i in ids[self.max_length:]):
                raise DataError(sample.about(f"{len(ids)} tokens, over max_length={self.max_length}, and "
                                             "truncating would cut media or the prompt"))
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE for label in labels):
            raise DataError(sample.about("no assistant tokens to learn"))
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features)

    def encode_prompt(self, sample: Sample, check_length: bool = True) -> Encoded:
        """A prompt for generation, ending with the assistant header; encoded once per request.

        `check_length=False` leaves the length to the caller (the server explains its own limit)."""
        if not sample.messages or sample.messages[-1].role != "user":
            raise DataError(sample.about("a prompt for generation must end with a user message"))
        ids, labels, media, features = self._render(sample, None, generation_prompt=True)
        if not ids:
            raise DataError(sample.about(f"the prompt is empty (no text or media, and template "
                                         f"{self.template!r} adds none); send some text"))
        if check_length and len(ids) > self.max_length:
            raise DataError(sample.about(f"{len(ids)} tokens, over max_length={self.max_length}, and "
                                         "truncating would cut media or the prompt"))
        return Encoded(torch.tensor(ids), torch.tensor(labels), media, features)

    def _render(self, sample: Sample, features: dict | None, generation_prompt: bool):
        media, features = self.load_media(sample, features)
        try:
            ids, labels = render(self.messages(sample), self.tokenizer, self._template,
                                 self.token_counts(media, features), self.end_token_ids,
                                 generation_prompt=generation_prompt, add_bos=self._add_bos,
                                 special_tokens_in_text=self.allow_special_tokens)
        except DataError as err:
            raise DataError(sample.about(str(err))) from None
        return ids, labels, media, features

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=True)


AutoProcessor.register(OmniConfig, OmniProcessor, exist_ok=True)
