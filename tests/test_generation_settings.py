"""GenerationSettings: one place for the generation bounds, mapped onto transformers' names."""
import dataclasses

import pytest
import transformers
from pydantic import ValidationError

from omnilm.errors import ConfigError
from omnilm.generation_settings import GenerationSettings
from omnilm.serve.limits import Limits
from omnilm.serve.protocol import ChatCompletionRequest


@pytest.mark.parametrize("setting, value, message", [
    ("temperature", -1, r"^temperature = -1: must be a finite number in \[0, 2\.0\]$"),
    ("temperature", float("nan"), r"^temperature = nan: must be a finite number in \[0, 2\.0\]$"),
    ("top_p", 0.0, r"^top_p = 0\.0: must be a finite number in \(0, 1\]$"),
    ("max_new_tokens", 0, r"^max_new_tokens = 0: must be an integer >= 1$"),
    ("stop", ["ok", ""], r"^stop\[1\] = '': must be a string of 1 to 256 characters$"),
    ("stop", "ok", r"^stop: expected a list of strings, got str 'ok'$"),
    ("seed", True, r"^seed: expected a number, got bool True$"),
])
def test_a_setting_out_of_bounds_is_one_line_naming_it(setting, value, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**{setting: value}).validate()


def _request_takes(name, value) -> bool:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], name: value}
    try:
        ChatCompletionRequest.model_validate(body, context={"limits": Limits()})
        return True
    except ValidationError:
        return False


def _settings_take(name, value) -> bool:
    try:
        GenerationSettings(**{name: value}).validate()
        return True
    except ConfigError:
        return False


@pytest.mark.parametrize("name, edges", [
    ("temperature", [-0.01, 0.0, 2.0, 2.01]), ("top_p", [0.0, 0.01, 1.0, 1.01]), ("top_k", [-1, 0, 2**31 - 1, 2**31]),
    ("repetition_penalty", [0.0, 0.01, 10.0, 10.01]), ("seed", [-2**63 - 1, -2**63, 2**63 - 1, 2**63]),
])
def test_the_server_and_the_library_draw_each_bound_at_the_same_place(name, edges):
    assert [_request_takes(name, v) for v in edges] == [_settings_take(name, v) for v in edges] == \
        [False, True, True, False]


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
