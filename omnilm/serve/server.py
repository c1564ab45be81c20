"""Start-up for `omnilm serve` and `omnilm app`: load the model once, start the engine, run."""
from __future__ import annotations

import logging
from pathlib import Path

from omnilm.extras import require
from omnilm.serve.api import ServerState, create_app
from omnilm.serve.engine import Engine
from omnilm.serve.limits import Limits

log = logging.getLogger(__name__)


def load_state(model_dir: str, *, model_name: str | None = None, api_key: str | None = None,
               limits: Limits | None = None, device: str | None = None, audio_route: str | None = None,
               transcriber: str | None = None, transcriber_backend: str | None = None,
               allow_special_tokens: bool = False) -> ServerState:
    """Load the model once (audio route and transcriber may override its recipe) and start the engine."""
    from omnilm.config import transcriber_config
    from omnilm.model.saved import load_pretrained

    model, processor = load_pretrained(model_dir, device=device, audio_route=audio_route,
                                       transcriber=transcriber_config(transcriber, transcriber_backend))
    processor.allow_special_tokens = allow_special_tokens
    engine = Engine(model, processor, limits or Limits()).start()
    name = model_name or Path(model_dir).resolve().name
    log.info("serving %s as %r (audio route: %s)", model_dir, name, processor.audio_route)
    return ServerState(engine, name, api_key)


def serve(state: ServerState, host: str = "127.0.0.1", port: int = 8000, ui: bool = True) -> None:
    uvicorn = require("uvicorn", "omnilm serve")
    app = create_app(state, ui=ui)
    where = f"http://{host}:{port}"
    log.info("OpenAI-compatible API at %s/v1%s", where, f"; web app at {where}/ui" if ui else "")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        state.engine.close()


def run_app(state: ServerState, host: str = "127.0.0.1", port: int = 7860) -> None:
    from omnilm.serve.webui import launch

    try:
        launch(state, host, port)
    finally:
        state.engine.close()

