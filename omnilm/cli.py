"""`omnilm` command line. User mistakes print one clear line (exit 2), not a traceback."""
from __future__ import annotations

import argparse
import logging
import os
import sys

# OpenMP threads that spin while waiting stall badly when the CPU is shared (other jobs, a
# shared CI runner): a training step measured 45 s instead of 2.7 s with 2 busy cores. Must be
# set before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml

from omnilm.config import CHOICES
from omnilm.errors import ConfigError, OmniError, TrainingStopped
from omnilm.eval.benchmarks import BENCHMARKS
from omnilm.eval.runner import ANSWER_PARTS, METRICS
from omnilm.extras import install_hint, missing_optional
from omnilm.generation_settings import GenerationSettings
from omnilm.training.launched import exit_launched, is_launched


def _recipe(args):
    from omnilm.config import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_train(args) -> None:
    from omnilm.training.loop import train

    result = train(_recipe(args), resume=args.resume, progress=not args.quiet)
    print(f"done: {result.state.step} steps, {result.state.samples} samples -> {result.run_dir}")


def cmd_cache_features(args) -> None:
    from omnilm.training.cache import cache_features

    recipe = _recipe(args)
    cache = cache_features(recipe, out=args.out, batch_size=args.batch_size)
    print(f"cached {len(cache)} items -> {cache.folder}\n"
          f"train with: --data.feature_cache={cache.folder}")


def cmd_data_check(args) -> int:
    from pathlib import Path

    from omnilm.model.data_check import check_data

    report = check_data(_recipe(args), progress=not args.quiet)
    for line in report.bad:
        print(f"bad: {line}")
    if args.fix_list:
        Path(args.fix_list).write_text("".join(f"{i}\n" for i in report.good_ids), encoding="utf-8")
        print(f"{len(report.good_ids)} good row ids -> {args.fix_list}")
    print(report.summary())
    return 1 if report.bad else 0


def cmd_fixtures(args) -> None:
    from omnilm.data.fixtures import make_all

    for name, path in make_all(args.out, hf=True).items():
        print(f"{name}: {path}")


def cmd_eval(args) -> None:
    from omnilm.eval.runner import evaluate_folder, write_result

    if bool(args.benchmark) == bool(args.source):
        raise ConfigError("omnilm eval needs either --benchmark NAME or --source SOURCE (not both)")
    if args.benchmark:
        return _eval_benchmark(args)
    if args.skip_bad:
        raise ConfigError("--skip-bad is for --benchmark runs")
    options = {}
    for item in args.option or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--option {item!r} must look like key=value")
        options[key] = yaml.safe_load(raw)
    result = evaluate_folder(args.model, args.source, args.data, metric=args.metric, image_dir=args.image_dir,
                             audio_dir=args.audio_dir, options=options, limit=args.limit,
                             batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                             answer=args.answer)
    print(result.summary())
    if args.out:
        print(f"predictions and scores -> {write_result(result, args.out)}")


def _eval_benchmark(args) -> None:
    from omnilm.eval.benchmark_runner import default_out, evaluate_benchmark, predictions_path

    chosen = {"--metric": args.metric, "--image-dir": args.image_dir, "--audio-dir": args.audio_dir,
              "--option": args.option, "--answer": args.answer != "reply"}
    given = [name for name, value in chosen.items() if value]
    if given:
        raise ConfigError(f"{given[0]} is not for --benchmark runs: a benchmark sets its own prompt and scoring")
    out = args.out or default_out(args.benchmark)
    result = evaluate_benchmark(args.benchmark, args.model, data=args.data, limit=args.limit, out=out,
                                batch_size=args.batch_size, skip_bad=args.skip_bad,
                                max_new_tokens=args.max_new_tokens)
    print(result.summary)
    skipped = f"; {len(result.skipped)} bad rows skipped" if result.skipped else ""
    print(f"predictions and scores -> {out} (replies as they came: {predictions_path(out)}){skipped}")


def cmd_quickstart(args) -> None:
    from omnilm.tasks.easyvqa.quickstart import run_quickstart

    run_quickstart(out=args.out, fast=args.fast, skip_audio=args.skip_audio, eval_questions=args.questions,
                   seed=args.seed, compare_transcription=args.compare_transcription)


def _limits(args):
    from omnilm.serve.limits import MIB, Limits

    return Limits(allow_remote_images=args.allow_remote_images, max_batch_size=args.max_batch_size,
                  allow_private_image_hosts=args.allow_private_image_hosts,
                  remote_timeout_s=args.remote_image_timeout,
                  max_new_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                  max_body_bytes=args.max_body_mb * MIB, max_image_pixels=args.max_image_pixels,
                  max_image_side=args.max_image_side, max_audio_seconds=args.max_audio_seconds)


def _serve_state(args):
    from omnilm.serve.server import load_state

    return load_state(args.model, model_name=args.model_name, api_key=args.api_key, limits=_limits(args),
                      device=args.device, audio_route=args.audio_route, transcriber=args.transcriber,
                      transcriber_backend=args.transcriber_backend, allow_special_tokens=args.allow_special_tokens)


def cmd_serve(args) -> None:
    from omnilm.serve.server import serve

    serve(_serve_state(args), host=args.host, port=args.port, ui=args.ui)


def cmd_app(args) -> None:
    from omnilm.serve.server import run_app

    run_app(_serve_state(args), host=args.host, port=args.port)


def _add_serving_options(p, port: int) -> None:
    import os

    from omnilm.serve.limits import MIB, Limits

    limits = Limits()  # the defaults
    p.add_argument("--model", required=True, help="a trained run or export folder")
    p.add_argument("--model-name", help="name clients use in 'model' (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept connections from other machines")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--api-key", default=os.environ.get("OMNILM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $OMNILM_API_KEY; none = open)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="let requests give http(s) image URLs that the server then fetches (public addresses only)")
    p.add_argument("--allow-private-image-hosts", action="store_true",
                   help="with --allow-remote-images: also fetch from loopback, private and link-local addresses")
    p.add_argument("--remote-image-timeout", type=float, default=limits.remote_timeout_s,
                   help="seconds for a whole image fetch (connect, redirects, every byte)")
    p.add_argument("--max-batch-size", type=int, default=limits.max_batch_size,
                   help="requests generated together in one batch")
    p.add_argument("--max-tokens-limit", type=int, default=limits.max_new_tokens,
                   help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, help="refuse longer prompts (default: the context decides)")
    p.add_argument("--max-body-mb", type=int, default=limits.max_body_bytes // MIB,
                   help="largest request body, base64 media included")
    p.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels,
                   help="refuse images with more pixels")
    p.add_argument("--max-image-side", type=int, default=limits.max_image_side,
                   help="refuse images wider or taller than this")
    p.add_argument("--max-audio-seconds", type=float, default=limits.max_audio_seconds, help="refuse longer audio")
    p.add_argument("--allow-special-tokens", action="store_true",
                   help="let special tokens typed in messages (<|endoftext|>) be control tokens, not text")
    _add_audio_route_options(p)


def _add_audio_route_options(p) -> None:
    p.add_argument("--audio-route", choices=CHOICES["model.audio_route"],
                   help="how audio reaches the model (default: the model's recipe)")
    p.add_argument("--transcriber", help="Whisper for the transcription route: folder, hub id or zoo:whisper-tiny.en")
    p.add_argument("--transcriber-backend", choices=CHOICES["model.transcriber.backend"],
                   help="default: ctranslate2 for zoo: models, else transformers")


def cmd_export(args) -> None:
    import torch

    from omnilm.model.saved import load_pretrained
    from omnilm.model.card import hub_preflight, push_folder
    from omnilm.model.export import export

    if args.push_to_hub:
        hub_preflight(args.push_to_hub)  # an offline machine hears so before minutes of work
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    out = export(*load_pretrained(args.model), args.out, args.format, dtype, source=args.model,
                 keep_lm_head_bias=args.keep_lm_head_bias, outtype=args.outtype, approximate_clip=args.approximate_clip)
    if args.format == "gguf":
        print(f"exported -> {out} (a text GGUF + mmproj-*.gguf: `llama-server -m {out}/<name>.gguf --mmproj "
              f"{out}/mmproj-<name>.gguf`, or `ollama create -f {out}/Modelfile`)")
    elif args.format == "llava":
        print(f"exported -> {out} (LlavaForConditionalGeneration, or LlavaNext... with tiling: anyres, + AutoProcessor; "
              f"`vllm serve {out}`)")
    else:
        print(f"exported -> {out} (OmniLM.from_pretrained + OmniProcessor.from_pretrained, or `omnilm chat --model {out}`)")
    if args.push_to_hub:
        print(f"uploaded -> {push_folder(out, args.push_to_hub)}")


def cmd_space(args) -> None:
    from omnilm.model.card import hub_preflight
    from omnilm.space import build_space, push_space

    if args.push:
        hub_preflight(args.push, option="--push", instead="build without --push")  # before any work
    out = build_space(args.out, model=args.model, hub_model=args.hub_model, title=args.title, license=args.license)
    print(f"Space folder -> {out} (try it: cd {out} && GRADIO_SERVER_NAME=127.0.0.1 python app.py)")
    if args.push:
        print(f"uploaded -> {push_space(out, args.push)}")


def cmd_convert(args) -> None:
    from omnilm.model.saved import write_run_model

    print(f"converted -> {write_run_model(args.run)} (loads with OmniLM.from_pretrained + OmniProcessor.from_pretrained)")


def cmd_chat(args) -> None:
    from pathlib import Path

    from omnilm.chat import ChatSession, run_repl
    from omnilm.errors import MediaError
    from omnilm.model.saved import load_pretrained

    config = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=args.stop or [],
                              seed=args.seed).validate()  # before the (slow) model load
    missing = [p for p in (args.image or []) + (args.audio or []) if not Path(p).is_file()]
    if missing:
        raise MediaError(f"file not found: {missing[0]}")
    from omnilm.config import transcriber_config

    model, processor = load_pretrained(args.model, device=args.device, audio_route=args.audio_route,
                                       transcriber=transcriber_config(args.transcriber, args.transcriber_backend))
    session = ChatSession(model, processor, config, system=args.system,
                          on_transcript=lambda texts: print("(heard: " + " / ".join(texts) + ")", file=sys.stderr))

    def write(text: str) -> None:  # flushed per piece: the answer appears as it is generated
        sys.stdout.write(text)
        sys.stdout.flush()

    if args.question is not None:
        for piece in session.ask(args.question, images=args.image or [], audios=args.audio or []):
            write(piece)
        write("\n")
        return
    for path in args.image or []:
        session.attach("image", path)
    for path in args.audio or []:
        session.attach("audio", path)
    write("omnilm chat: type a message; /help for commands, /quit to leave\n")
    run_repl(session, _input_lines(), write)


def _input_lines():
    """Lines typed at the terminal until end of input (Ctrl-D)."""
    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnilm", description="Build multimodal (text, image, audio -> text) LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_recipe(p):
        p.add_argument("recipe", help="YAML recipe, e.g. configs/tiny-stage1.yaml")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. --train.lr=1e-4 data.limit=100")

    p = sub.add_parser("train", help="train a stage from a recipe")
    with_recipe(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache-features", help="run the frozen image encoder once over a data set and store features")
    with_recipe(p)
    p.add_argument("--out", help="cache folder (default: data.feature_cache of the recipe)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_cache_features)

    p = sub.add_parser("data", help="data set tools")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="read every row and media file of a recipe's data as training would; "
                                      "list each bad one with the reason (exit 1 if any)")
    with_recipe(p)
    p.add_argument("--fix-list", metavar="FILE", help="write the good rows' ids to FILE, one a line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("export", help="merge LoRA (dequantizing a 4-bit base) into a self-contained folder")
    p.add_argument("--model", required=True, help="run folder (or export folder)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", default="auto", choices=CHOICES["model.llm.dtype"])
    # model/export.py FORMATS, restated: importing it loads torch (tests/test_cli_choices.py holds them equal)
    p.add_argument("--format", default="omnilm", choices=["omnilm", "llava", "gguf"],
                   help="llava: a transformers LlavaForConditionalGeneration folder (LlavaNext... with tiling: "
                        "anyres; vLLM, SGLang, TGI serve it); gguf: llama.cpp's text GGUF + mmproj GGUF")
    # model/gguf_text.py OUTTYPES, restated (as FORMATS)
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "q8_0"],
                   help="gguf: the text model's weight type (the mmproj is f32 or f16)")
    p.add_argument("--approximate-clip", action="store_true",
                   help="gguf: export a CLIP tower although llama.cpp reads its class token in place of the first "
                        "patch (1 image token in N differs; SigLIP exports exactly)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hugging Face hub repo")
    p.add_argument("--keep-lm-head-bias", action="store_true",
                   help="llava: write the LLM's LM-head bias (Phi) that vLLM applies and transformers' LLaVA ignores")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="give a run folder from before model folders its config.json, weights and "
                                       "processor files, so from_pretrained loads it")
    p.add_argument("run", help="run folder (recipe.yaml + weights.safetensors or checkpoints/)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("fixtures", help="write small COCO-, LLaVA-, parquet and WebDataset data sets for the tiny recipes")
    p.add_argument("--out", default="data/tiny")
    p.set_defaults(func=cmd_fixtures)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (and the web app at /ui) for a trained model")
    _add_serving_options(p, port=8000)
    p.add_argument("--ui", action=argparse.BooleanOptionalAction, default=True, help="mount the web app at /ui")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("app", help="the web app alone (image, microphone and text chat)")
    _add_serving_options(p, port=7860)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("space", help="a Hugging Face Space folder (Gradio) that serves the web app on a model")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a trained run or export folder, copied into the Space")
    model.add_argument("--hub-model", metavar="ID", help="a model on the hub, which the Space downloads when it starts")
    p.add_argument("--out", required=True, help="folder to write (an earlier Space folder is replaced)")
    p.add_argument("--title", help="the Space's title (default: the model's name)")
    p.add_argument("--license", default="apache-2.0", help="the Space's license (a hub license id)")
    p.add_argument("--push", metavar="REPO", help="upload the folder as this Space (user/name)")
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("chat", help="talk to a trained model: one question, or a conversation when none is given")
    p.add_argument("question", nargs="?", help="ask once and exit; without it, start an interactive chat")
    p.add_argument("--model", required=True, help="a training run folder or an export folder")
    p.add_argument("--image", action="append", metavar="PATH", help="image for the (first) message; repeatable")
    p.add_argument("--audio", action="append", metavar="PATH", help="audio file for the (first) message; repeatable")
    p.add_argument("--system", help="system prompt")
    settings = GenerationSettings()  # the defaults; their bounds are checked before the model loads
    p.add_argument("--max-new-tokens", type=int, default=settings.max_new_tokens)
    p.add_argument("--temperature", type=float, default=settings.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=settings.top_p)
    p.add_argument("--top-k", type=int, default=settings.top_k, help="0 = off")
    p.add_argument("--repetition-penalty", type=float, default=settings.repetition_penalty)
    p.add_argument("--stop", action="append", metavar="TEXT", help="end the answer before this text; repeatable")
    p.add_argument("--seed", type=int, help="make sampling reproducible")
    p.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: where the weights load)")
    _add_audio_route_options(p)
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("eval", help="score a trained model on a data set (VQA accuracy, BLEU-4/CIDEr, WER)")
    p.add_argument("--model", required=True, help="a trained run or export folder")
    p.add_argument("--benchmark", choices=tuple(BENCHMARKS),
                   help="a standard benchmark scored as lmms-eval scores it, read from the hub (or --data)")
    p.add_argument("--data", help="annotation / conversation / manifest file (easyvqa needs none); with "
                                  "--benchmark: a local copy (parquet, arrow, json, a save_to_disk folder)")
    p.add_argument("--source", choices=CHOICES["data.source"], help="the data set's format (without --benchmark)")
    p.add_argument("--metric", choices=METRICS, help="default: wer for asr, else vqa")
    p.add_argument("--image-dir", help="folder relative image paths start from (default: the data file's)")
    p.add_argument("--audio-dir", help="folder relative audio paths start from (default: the data file's)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="source option (data.options), e.g. --option split=test --option sample=500")
    p.add_argument("--limit", type=int, help="score only the first N samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int,
                   help="default: 8 (vqa), 48 (caption), 96 (wer); a benchmark's own (lmms-eval's)")
    p.add_argument("--skip-bad", action="store_true", help="--benchmark: leave out (and count) rows that "
                                                           "cannot be read instead of stopping")
    p.add_argument("--answer", choices=tuple(ANSWER_PARTS), default="reply",
                   help="the part of each reply scored: all of it, or its last line (a model that describes "
                        "the image, then answers)")
    p.add_argument("--final-line", dest="answer", action="store_const", const="last-line",
                   help="same as --answer last-line")
    p.add_argument("--out", help="write scores and every prediction to this JSON file (--benchmark: default "
                                 "eval-NAME.json; the same --out continues an interrupted run)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="offline: build, train and evaluate a real small multimodal model")
    p.add_argument("--out", default="runs/quickstart", help="run folder (stages, results.json, results.png)")
    p.add_argument("--fast", action="store_true", help="a shortened run (fewer steps and questions) for tests")
    p.add_argument("--skip-audio", action="store_true", help="typed questions only: no speech, no audio stages")
    p.add_argument("--questions", type=int, help="test questions to evaluate (default 1000; 300 with --fast)")
    p.add_argument("--compare-transcription", action="store_true",
                   help="also score the transcription route (Whisper's text in the typed model's prompt; ~7 min)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every training stage (initialisation, data order, LoRA); the test sample stays fixed")
    p.set_defaults(func=cmd_quickstart)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; per-file weight-loading bars and library
    deprecation notices only bury them (-v shows everything)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per file of every checkpoint


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Overrides look like options (--train.lr=1e-4); keep them away from argparse.
    known, extra = parser.parse_known_args(argv)
    dotted = [a for a in extra if "." in a.split("=")[0] and "=" in a]
    unknown = [a for a in extra if a not in dotted]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(known, "overrides"):
        known.overrides = list(known.overrides or []) + dotted
    elif dotted:
        parser.error(f"{known.command} takes no recipe overrides: {' '.join(dotted)}")
    logging.basicConfig(level=logging.DEBUG if known.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not known.verbose:
        _quiet_libraries()
    status = _run(known)
    if is_launched():  # one rank of several: interpreter teardown can abort it (see launched.py)
        exit_launched(status)
    return status


def _run(args) -> int:
    try:
        return args.func(args) or 0
    except OmniError as err:
        print(f"omnilm: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        again = "continue with --resume" if args.command == "train" else "run the same command again to continue"
        print(f"omnilm: {stop}; {again}", file=sys.stderr)
        return 128 + stop.signum  # what a shell reports for a process the signal ended
    except ModuleNotFoundError as err:
        if missing_optional(err) is None:
            raise
        print(f"omnilm: error: {install_hint(err.name, f'omnilm {args.command}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("omnilm: interrupted (the last complete checkpoint is kept; use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
