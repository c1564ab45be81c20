"""Serving: an OpenAI-compatible HTTP API and a web app over one generation engine.

  engine.py    the one worker thread that owns the model; queues, batches, streams
  protocol.py  OpenAI chat-completions JSON <-> Samples and GenerationSettings (typed pydantic request models)
  media.py     data: URLs, base64 audio and (opt-in) remote images -> checked images and waveforms
  api.py       FastAPI routes, API key, body limit, OpenAI-shaped errors
  webui.py     the Gradio chat, mounted at /ui or run alone
  server.py    start-up for `omnilm serve` / `omnilm app`
"""
