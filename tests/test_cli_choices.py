"""The CLI restates no fact: its choices lists and serving defaults are those of their owners."""
import argparse

from omnilm.cli import _limits, build_parser
from omnilm.config import CHOICES
from omnilm.eval.benchmarks import BENCHMARKS
from omnilm.eval.runner import ANSWER_PARTS, METRICS
from omnilm.model.export import FORMATS
from omnilm.model.gguf_text import OUTTYPES
from omnilm.serve.limits import Limits

OWNERS = {
    ("serve", "audio_route"): CHOICES["model.audio_route"],
    ("serve", "transcriber_backend"): CHOICES["model.transcriber.backend"],
    ("app", "audio_route"): CHOICES["model.audio_route"],
    ("app", "transcriber_backend"): CHOICES["model.transcriber.backend"],
    ("chat", "audio_route"): CHOICES["model.audio_route"],
    ("chat", "transcriber_backend"): CHOICES["model.transcriber.backend"],
    ("export", "dtype"): CHOICES["model.llm.dtype"],
    ("export", "format"): FORMATS,
    ("export", "outtype"): OUTTYPES,
    ("eval", "source"): CHOICES["data.source"],
    ("eval", "metric"): METRICS,
    ("eval", "answer"): tuple(ANSWER_PARTS),
    ("eval", "benchmark"): tuple(BENCHMARKS),
}


def _choices_lists(parser, command=""):
    """(command, dest) -> choices for every option of every (nested) subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _choices_lists(sub, f"{command} {name}".strip())
        elif action.choices is not None:
            yield (command, action.dest), tuple(action.choices)


def test_every_cli_choices_list_equals_its_owners():
    found = dict(_choices_lists(build_parser()))
    assert set(found) == set(OWNERS), "a choices list without a known owner (add it to OWNERS)"
    for key, choices in found.items():
        assert sorted(choices) == sorted(OWNERS[key]), key


def test_eval_accepts_every_data_source_hf_included():
    args = build_parser().parse_args(["eval", "--model", "run", "--source", "hf", "--data", "some/dataset"])
    assert args.source == "hf"


def test_serve_flags_default_to_the_servers_own_limits():
    for command in ("serve", "app"):
        args = build_parser().parse_args([command, "--model", "run"])
        assert _limits(args) == Limits()
