"""omnilm: build multimodal (text, image, audio -> text) language models."""

__version__ = "0.1.0"
