"""GenerationSettings: one place for the generation bounds, mapped onto transformers' names."""
import dataclasses

import pytest
import transformers
from pydantic import TypeAdapter

from omnilm.errors import ConfigError
from omnilm.generation_settings import GenerationSettings
from omnilm.serve.protocol import ChatCompletionRequest


@pytest.mark.parametrize("setting, value, message", [
    ("temperature", -1, r"^temperature = -1: input should be greater than or equal to 0$"),
    ("temperature", float("nan"), r"^temperature = nan: input should be a finite number$"),
    ("top_p", 0.0, r"^top_p = 0\.0: input should be greater than 0$"),
    ("max_new_tokens", 0, r"^max_new_tokens = 0: input should be greater than or equal to 1$"),
    ("top_k", 2.5, r"^top_k = 2\.5: input should be a valid integer"),
    ("stop", ["ok", ""], r"^stop\[1\] = '': string should have at least 1 character$"),
    ("seed", True, r"^seed = True: input should be a valid integer"),
])
def test_a_setting_out_of_bounds_is_one_line_naming_it(setting, value, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**{setting: value}).validate()


def _bounds(schema: dict) -> dict:
    schema = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    return {k: v for k, v in schema.items() if k in BOUND_KEYS}


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength")


def test_the_servers_request_fields_take_the_settings_bounds():
    settings = TypeAdapter(GenerationSettings).json_schema()["properties"]
    request = ChatCompletionRequest.model_json_schema()["properties"]
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        assert _bounds(settings[name]), name  # every one is bounded
        assert _bounds(request[name]) == _bounds(settings[name]), name


@pytest.mark.parametrize("settings", [GenerationSettings(), GenerationSettings(temperature=0.7, top_p=0.9, top_k=5,
                                                                                 repetition_penalty=1.2)])
def test_settings_map_onto_transformers_generation_config(settings):
    config = transformers.GenerationConfig(**settings.transformers_kwargs())
    config.validate(strict=True)  # transformers itself finds nothing contradictory
    assert config.max_new_tokens == settings.max_new_tokens and config.do_sample == settings.do_sample
    if settings.do_sample:
        assert (config.temperature, config.top_p, config.top_k) == (settings.temperature, settings.top_p,
                                                                    settings.top_k)
    kept = {f.name for f in dataclasses.fields(settings)} - {"stop", "seed", "use_cache", "ignore_eos"}
    assert kept <= set(settings.transformers_kwargs())
