"""Chat: a conversation kept across turns, and a REPL that needs no terminal.

`ChatSession` holds the messages and every media item the conversation has referred to (earlier
user turns keep their <image>/<audio> markers, so their media must come along on every turn).
`run_repl` reads lines from any iterable and writes through any callable, so tests script it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

from omnilm.audio.route import Transcription
from omnilm.core.sample import Message, Sample
from omnilm.data.markers import with_markers
from omnilm.errors import MediaError, OmniError
from omnilm.generation import stream
from omnilm.generation_settings import GenerationSettings

HELP = """commands:
  /image PATH   attach an image to your next message
  /audio PATH   attach an audio file to your next message
  /reset        forget the conversation
  /quit         leave (also /exit, or end of input)
  /help         this text"""


class ChatSession:
    def __init__(self, model, processor, config: GenerationSettings | None = None, system: str | None = None,
                 on_transcript: Callable[[list[str]], object] | None = None,
                 transcription: Transcription | None = None):
        """`on_transcript` hears what Whisper made of each turn's audio (transcription route);
        `transcription` is that step (the processor's when not given)."""
        self.model = model
        self.processor = processor
        self.transcription = transcription or Transcription.for_processor(processor)
        self.config = config or GenerationSettings()
        self.system = system
        self.on_transcript = on_transcript
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = [Message("system", self.system)] if self.system else []
        self.images: list = []  # every image of the conversation, in marker order
        self.audios: list = []
        self.pending_images: list = []  # attached with /image, sent with the next message
        self.pending_audios: list = []
        self.last_sample: Sample | None = None  # what the latest turn sent to the model

    def attach(self, modality: str, path) -> None:
        if not Path(path).is_file():
            raise MediaError(f"{modality} file not found: {path}")
        (self.pending_images if modality == "image" else self.pending_audios).append(str(path))

    def ask(self, text: str, images: Iterable = (), audios: Iterable = ()) -> Iterator[str]:
        """Stream the answer to `text`; the turn joins the history once the answer is complete.

        Media attached before (attach) or given here go with this message: where `text` has no
        marker of its own for an item, one is put first, a line each (LLaVA's layout, and the
        same text `omnilm serve` builds from an image and a question). On the transcription
        route the audio is transcribed once, here, and the turn keeps the transcript instead.
        A failed turn leaves the history as it was and drops those media.
        """
        images = self.pending_images + list(images)
        audios = self.pending_audios + list(audios)
        self.pending_images, self.pending_audios = [], []
        user = Message("user", with_markers(text, len(images), len(audios)))
        if audios and self.transcription.active:
            heard, transcripts = self.transcription(Sample([user], audios=audios))
            user, audios = heard.messages[0], []
            if self.on_transcript:
                self.on_transcript(transcripts)
        sample = Sample(self.messages + [user], images=self.images + images, audios=self.audios + audios)
        self.last_sample = sample
        pieces = []
        for piece in stream(self.model, self.processor, sample, self.config):
            pieces.append(piece)
            yield piece
        # Stored without surrounding whitespace: templates add their own assistant prefix
        # (" " for plain/phi), so re-rendering gives the tokens the model produced.
        self.messages += [user, Message("assistant", "".join(pieces).strip())]
        self.images += images
        self.audios += audios


def run_repl(session: ChatSession, lines: Iterable[str], write: Callable[[str], object]) -> None:
    """Answer each line (streamed through `write`) until /quit or the lines run out.

    A mistake in one turn (missing file, media the model cannot take) is reported and the
    conversation goes on; anything else is a bug and propagates.
    """
    for raw in lines:
        line = raw.strip()
        if not line and not (session.pending_images or session.pending_audios):
            continue  # an empty line sends only media attached with /image or /audio
        if line.startswith("/"):
            if not _command(session, line, write):
                return
            continue
        try:
            for piece in session.ask(line):
                write(piece)
            write("\n")
        except OmniError as err:
            write(f"\nerror: {err}\n")


def _command(session: ChatSession, line: str, write) -> bool:
    """Run one /command; False means leave the REPL."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        write("(conversation cleared)\n")
    elif name in ("/image", "/audio"):
        if not arg:
            write(f"usage: {name} PATH\n")
            return True
        try:
            session.attach(name[1:], arg)
            write(f"({name[1:]} attached: {arg}; it goes with your next message)\n")
        except OmniError as err:
            write(f"error: {err}\n")
    elif name == "/help":
        write(HELP + "\n")
    else:
        write(f"unknown command {name}; /help lists the commands\n")
    return True
