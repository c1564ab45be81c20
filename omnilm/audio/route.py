"""Which way audio reaches the model (the one place that decides it), and the transcription step
that runs before the processor on the transcription route."""
from __future__ import annotations

from omnilm.audio.transcribe import SpeechToText
from omnilm.core.sample import Sample

ROUTES = ("native", "transcribe", "none")


def audio_route(model_cfg) -> str:
    """A recipe's ModelConfig -> "native" (an audio encoder), "transcribe" (Whisper's text in the
    prompt) or "none"; `audio_route: auto` picks native when model.audio is set, else transcribe
    when a transcriber is."""
    if model_cfg.audio_route != "auto":
        return model_cfg.audio_route
    return "native" if model_cfg.audio is not None else "transcribe" if model_cfg.transcriber is not None else "none"


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
    def for_model(cls, model) -> "Transcription":
        """The step of a built model's recipe (none for a model built without one)."""
        recipe = getattr(model, "recipe", None)
        return cls.from_model_config(recipe.model) if recipe is not None else cls()

    @property
    def active(self) -> bool:
        return self.speech_to_text is not None

    def __call__(self, sample: Sample) -> tuple[Sample, list[str]]:
        """(the sample with text where its audio was, what each audio said)."""
        if sample.audios and self.speech_to_text is not None:
            return self.speech_to_text(sample)
        return sample, []
