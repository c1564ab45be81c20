"""OmniConfig: everything an OmniLM needs to be rebuilt, and nothing about how it was trained.

A saved model folder is `config.json` (this) + safetensors weights + the processor's files; the
training recipe that made it (`recipe.yaml`) may lie beside it for provenance, but loading never
reads it. The LLM's and the encoders' own transformers configs are nested as sub-configs; what
omnilm adds per modality (encoder type and options, projector, end-of-media token) is a plain
mapping with the recipe's EncoderConfig keys.
"""
from __future__ import annotations

import dataclasses

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from omnilm.config import EncoderConfig, ModelConfig, from_dict

MODALITIES = ("image", "audio")
# The recipe keys that say where an encoder's weights come from: a saved model holds them itself.
_SOURCE_KEYS = ("name_or_path", "random_config")


class OmniConfig(PreTrainedConfig):
    """`text_config`: the causal LM's config. `image_encoder_config` / `audio_encoder_config`: the
    encoders' transformers configs (CLIP/SigLIP vision, Whisper), None for an encoder without one
    (EfficientNet-Lite0) or a modality the model lacks. `image` / `audio`: omnilm's settings of that
    modality (EncoderConfig keys: type, layer, drop_cls, image_size, pool_grid, stack_frames,
    max_seconds, end_token_id, projector), None when the model has no such encoder."""

    model_type = "omnilm"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "image_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "audio_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    image_encoder_config: dict | PreTrainedConfig | None = None
    audio_encoder_config: dict | PreTrainedConfig | None = None
    image: dict | None = None
    audio: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Whether the LM head shares the embedding table is the LLM's own setting.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    def encoder(self, modality: str) -> EncoderConfig | None:
        """The modality's settings as the recipe's EncoderConfig (no weights source), or None."""
        settings = getattr(self, modality)
        return None if settings is None else from_dict(EncoderConfig, settings, f"config.{modality}")

    def encoder_config(self, modality: str) -> PreTrainedConfig | None:
        return getattr(self, f"{modality}_encoder_config")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)


def settings_of(encoder: EncoderConfig) -> dict:
    """A recipe's EncoderConfig as OmniConfig keeps it: every key but where the weights came from."""
    settings = dataclasses.asdict(encoder)
    for key in _SOURCE_KEYS:
        settings.pop(key)
    return settings


def omni_config(model: ModelConfig, text_config: PreTrainedConfig, encoder_configs: dict) -> OmniConfig:
    """The config of a model built from recipe section `model`: its LLM's config and each
    encoder's transformers config (modality -> config or None), as loaded."""
    text = text_config.to_dict()
    text.pop("quantization_config", None)  # a load-time choice (NF4 for QLoRA), not part of the model
    kwargs = {"text_config": text}
    for modality in MODALITIES:
        encoder = getattr(model, modality)
        if encoder is None:
            continue
        kwargs[modality] = settings_of(encoder)
        sub = encoder_configs.get(modality)
        kwargs[f"{modality}_encoder_config"] = sub.to_dict() if sub is not None else None
    return OmniConfig(**kwargs)


AutoConfig.register(OmniConfig.model_type, OmniConfig, exist_ok=True)
