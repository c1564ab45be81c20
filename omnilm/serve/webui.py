"""The web app: a Gradio chat over the same Engine the HTTP API uses.

Mounted at /ui by `omnilm serve`, or on its own with `omnilm app`. The conversation is kept
twice: the Chatbot's display messages, and our own Turns (with the decoded media) from which
each prompt is rebuilt, so images from earlier turns stay in the model's context.
"""
from __future__ import annotations

import hmac
import tempfile
from pathlib import Path

import gradio as gr
from gradio.exceptions import InvalidPathError
from PIL import Image, ImageDraw

from omnilm.data.audio import SAMPLING_RATE, load_audio
from omnilm.data.images import ACCEPTED_IMAGES, load_image
from omnilm.data.markers import reserved_marker
from omnilm.errors import OmniError
from omnilm.generation_settings import MAX_TEMPERATURE, GenerationSettings
from omnilm.serve.engine import Busy
from omnilm.serve.errors import APIError
from omnilm.serve.protocol import AudioClip, Turn, to_sample

UI_PATH = "/ui"
CONCURRENT_CHATS = 16  # gradio runs this many handlers at once; the engine batches their work


def build_ui(state) -> tuple[gr.Blocks, list[str]]:
    """-> (the Blocks app, folders it serves files from)."""
    engine, limits = state.engine, state.limits
    examples_dir = _example_files()
    takes_audio = state.audio_route != "none"
    with _ChatBlocks(title=f"omnilm: {state.model_name}", analytics_enabled=False) as demo:
        gr.Markdown(f"### omnilm chat: `{state.model_name}`\nAdd an image or audio, type a question, press Send.")
        chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chat")
        turns = gr.State([])
        with gr.Row():
            image = _UndecodedImage(type="filepath", label="Image", sources=["upload", "clipboard"], height=200,
                                    elem_id="image-input")
            # Gradio's File input does not decode what it receives: load_image reads each upload.
            more_images = gr.File(file_count="multiple", type="filepath", file_types=["image"], height=200,
                                  label="More images (after the first, in order)", elem_id="more-images")
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio (microphone or file)",
                             elem_id="audio-input", visible=takes_audio)
        text = gr.Textbox(label="Message", placeholder="Ask about the image…", lines=2, elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("New conversation", elem_id="clear")
        with gr.Accordion("Generation settings", open=False):
            max_tokens = gr.Slider(1, min(limits.max_new_tokens, engine.context or limits.max_new_tokens),
                                   value=min(64, limits.default_max_tokens), step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, MAX_TEMPERATURE, value=0.0, step=0.05, label="Temperature (0 = greedy)")
        gr.Examples(examples=[[str(examples_dir / "red-square.png"), "What colour is the shape?"],
                              [str(examples_dir / "blue-circle.png"), "Describe the image."],
                              [None, "Hello! What can you do?"]],
                    inputs=[image, text], label="Examples")

        def respond(message, image_path, more_paths, audio_path, max_new, temp, history, past):
            history, past = list(history or []), list(past or [])
            turn, shown = _user_turn(state, message, [image_path, *(more_paths or [])], audio_path)
            _check_image_count(state, past + [turn])
            history += shown
            history.append({"role": "assistant", "content": ""})
            yield history, past, "", None, None, None
            config = GenerationSettings(max_new_tokens=int(max_new), temperature=float(temp))
            # max_tokens_given=False: a long conversation gets a shorter answer, not an error.
            handle, answer = None, ""
            try:
                handle = engine.stream(to_sample(past + [turn]), config, max_tokens_given=False)
                transcripts = handle.start_sync().transcripts
                if transcripts:  # the transcription route: show what the model was told
                    shown.append({"role": "user", "content": "🎤 *transcript:* " + " / ".join(transcripts)})
                    history.insert(len(history) - 1, shown[-1])
                    turn = _with_transcripts(turn, transcripts)
                    yield history, past, "", None, None, None
                for piece in handle:
                    answer += piece
                    history[-1] = {"role": "assistant", "content": answer}
                    yield history, past, "", None, None, None
            except (OmniError, APIError, Busy) as err:
                # The failed turn leaves the page and is not kept, so the next question starts clean.
                yield history[: -len(shown) - 1], past, message, None, None, None
                raise gr.Error(_message(err)) from None
            finally:
                if handle is not None:
                    handle.cancel()  # the page closed mid-answer: stop generating for it
            past += [turn, Turn("assistant", [answer])]
            yield history, past, "", None, None, None

        inputs = [text, image, more_images, audio, max_tokens, temperature, chatbot, turns]
        outputs = [chatbot, turns, text, image, more_images, audio]
        send.click(respond, inputs, outputs)
        text.submit(respond, inputs, outputs)
        clear.click(lambda: ([], [], "", None, None, None), None, outputs)
    demo.queue(default_concurrency_limit=CONCURRENT_CHATS)
    return demo, [str(examples_dir)]


class _ChatBlocks(gr.Blocks):
    """The app's Blocks: a file a request names that was not uploaded through the app is refused
    in our words. Gradio's own refusal prints the absolute path, and so the server's working
    directory for a relative name."""

    async def preprocess_data(self, *args, **kwargs):
        try:
            return await super().preprocess_data(*args, **kwargs)
        except InvalidPathError:
            raise gr.Error("A file in this request was not uploaded by a user through this app; "
                           "add it with the app's image or audio input.") from None


class _UndecodedImage(gr.Image):
    """An image input whose upload reaches `respond` as its file, never opened by Gradio: Gradio
    would hand it to every Pillow plugin, load_image only to the accepted formats (and checks
    the size from the header before any pixel is decoded)."""

    def get_block_name(self) -> str:
        return "image"  # the page draws it as Gradio's own image input

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error(f"Upload the image as a file ({ACCEPTED_IMAGES}).")
        return payload.path


def _user_turn(state, message: str, image_paths: list, audio_path: str | None) -> tuple[Turn, list[dict]]:
    """The user's inputs -> our Turn (decoded media, images in the order given) and the Chatbot
    messages that show them."""
    message = (message or "").strip()
    image_paths = [path for path in image_paths if path]
    if not (message or image_paths or audio_path):
        raise gr.Error("Type a message, or add an image or audio.")
    parts, shown = [], []
    try:
        for i, image_path in enumerate(image_paths):
            name = "the image" if len(image_paths) == 1 else f"image {i + 1}"
            parts.append(load_image(image_path, name=name, max_pixels=state.limits.max_image_pixels,
                                    max_side=state.limits.max_image_side))
            shown.append({"role": "user", "content": gr.Image(image_path)})
        if audio_path:
            clip = AudioClip(load_audio(audio_path, sampling_rate=SAMPLING_RATE, name="the audio",
                                        max_seconds=min(state.limits.max_audio_seconds, state.audio_max_seconds)))
            if state.audio_route == "none":
                raise gr.Error("This model has no audio encoder and no transcriber; type your question "
                               "(or start the server with --transcriber zoo:whisper-tiny.en).")
            shown.append({"role": "user", "content": gr.Audio(audio_path)})
            parts.append(clip)
    except OmniError as err:
        raise gr.Error(str(err)) from None
    if message:
        if token := reserved_marker(message):
            raise gr.Error(f"{token} is a reserved marker; use the image and audio inputs instead.")
        parts.append(message)
        shown.append({"role": "user", "content": message})
    return Turn("user", parts), shown


def _check_image_count(state, turns: list[Turn]) -> None:
    """The server's per-request image limit, over the whole conversation the prompt carries."""
    images = sum(isinstance(p, Image.Image) for t in turns for p in t.parts)
    if images > state.limits.max_images:
        raise gr.Error(f"{images} images in this conversation; the limit is {state.limits.max_images} images "
                       "per request (start a new conversation)")


def _with_transcripts(turn: Turn, transcripts: list[str]) -> Turn:
    """Later prompts carry the text the transcriber heard, so the audio is transcribed only once."""
    heard = iter(transcripts)
    return Turn(turn.role, [next(heard) if isinstance(p, AudioClip) else p for p in turn.parts])


def _message(err: BaseException) -> str:
    return err.message if isinstance(err, APIError) else str(err)


def _example_files() -> Path:
    """Small example pictures, drawn here so the app needs no bundled assets."""
    folder = Path(tempfile.gettempdir()) / "omnilm-ui-examples"
    folder.mkdir(exist_ok=True)
    for name, shape, color in (("red-square.png", "rectangle", (220, 40, 40)),
                               ("blue-circle.png", "ellipse", (40, 90, 220))):
        if not (folder / name).is_file():
            img = Image.new("RGB", (128, 128), (245, 245, 245))
            getattr(ImageDraw.Draw(img), shape)((24, 24, 104, 104), fill=color)
            img.save(folder / name)
    return folder


def mount_ui(app, state, path: str = UI_PATH) -> None:
    """Put the web app on an existing FastAPI app (the API server) at `path`."""
    demo, allowed = build_ui(state)
    gr.mount_gradio_app(app, demo, path=path, allowed_paths=allowed, auth=_auth(state),
                        auth_message="This server needs its API key: any user name, the key as password.",
                        max_file_size=state.limits.max_body_bytes)
    # Gradio checks that a file a client names was uploaded through the app only once the app
    # "has launched", which launch() marks and mount_gradio_app (gradio 6.31) does not: without
    # this, a client could name any server path (/etc/passwd) and get it copied and served back.
    demo.has_launched = True


def _auth(state):
    if state.api_key is None:
        return None
    return lambda user, password: hmac.compare_digest(password.encode(), state.api_key.encode())


def launch(state, host: str = "127.0.0.1", port: int = 7860) -> None:
    """`omnilm app`: the web app alone."""
    demo, allowed = build_ui(state)
    demo.launch(server_name=host, server_port=port, allowed_paths=allowed, auth=_auth(state),
                max_file_size=state.limits.max_body_bytes, footer_links=[], show_error=True)
