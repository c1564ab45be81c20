"""Which way audio reaches the model (the one place that decides it), and the transcription step
that runs before the processor on the transcription route."""
from __future__ import annotations

from omnilm.audio.transcribe import SpeechToText
from omnilm.config import TranscriberConfig
from omnilm.core.sample import Sample
from omnilm.errors import ConfigError


def audio_route(model_cfg) -> str:
    """A recipe's ModelConfig -> "native" (an audio encoder), "transcribe" (Whisper's text in the
    prompt) or "none"; `audio_route: auto` picks native when model.audio is set, else transcribe
    when a transcriber is."""
    return decide_route(model_cfg.audio_route, model_cfg.audio is not None, model_cfg.transcriber is not None)


def decide_route(requested: str, has_encoder: bool, has_transcriber: bool) -> str:
    """`requested` (auto, native, transcribe) for a model with or without an audio encoder and a
    transcriber; a route the model cannot take is a one-line error."""
    if requested == "auto":
        return "native" if has_encoder else "transcribe" if has_transcriber else "none"
    if requested == "native" and not has_encoder:
        raise ConfigError("audio route native needs an audio encoder (model.audio); this model has none")
    if requested == "transcribe" and not has_transcriber:
        raise ConfigError("audio route transcribe needs a transcriber (model.transcriber, or --transcriber)")
    return requested


class Transcription:
    """The step before the processor: on the transcription route a Sample's <audio> markers become
    what Whisper heard; on any other route a sample passes as it is."""

    def __init__(self, speech_to_text: SpeechToText | None = None):
        self.speech_to_text = speech_to_text

    @classmethod
    def from_model_config(cls, model_cfg) -> "Transcription":
        if audio_route(model_cfg) != "transcribe":
            return cls()
        max_seconds = model_cfg.audio.max_seconds if model_cfg.audio is not None else 120.0
        return cls(SpeechToText(model_cfg.transcriber, max_seconds))

    @classmethod
    def for_processor(cls, processor) -> "Transcription":
        """The step a processor's audio route and transcriber call for (none off that route)."""
        if processor.audio_route != "transcribe":
            return cls()
        return cls(SpeechToText(TranscriberConfig(**processor.transcriber), processor.audio_max_seconds))

    @property
    def active(self) -> bool:
        return self.speech_to_text is not None

    def __call__(self, sample: Sample) -> tuple[Sample, list[str]]:
        """(the sample with text where its audio was, what each audio said)."""
        if sample.audios and self.speech_to_text is not None:
            return self.speech_to_text(sample)
        return sample, []
