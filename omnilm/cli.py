"""`omnilm` command line. User mistakes print one clear line (exit 2), not a traceback."""
from __future__ import annotations

import argparse
import logging
import sys

from omnilm.errors import OmniError


def _recipe(args):
    from omnilm.config import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_train(args) -> None:
    from omnilm.train.loop import train

    result = train(_recipe(args), resume=args.resume, progress=not args.quiet)
    print(f"done: {result.state.step} steps, {result.state.samples} samples -> {result.run_dir}")


def cmd_cache_features(args) -> None:
    from omnilm.train.cache import cache_features

    recipe = _recipe(args)
    cache = cache_features(recipe, out=args.out, batch_size=args.batch_size)
    print(f"cached {len(cache)} items -> {cache.folder}\n"
          f"train with: --data.feature_cache={cache.folder}")


def cmd_fixtures(args) -> None:
    from omnilm.data.fixtures import make_all

    for name, path in make_all(args.out).items():
        print(f"{name}: {path}")


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

    p = sub.add_parser("fixtures", help="write small COCO- and LLaVA-format data sets for the tiny recipes")
    p.add_argument("--out", default="data/tiny")
    p.set_defaults(func=cmd_fixtures)
    return parser


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
    try:
        known.func(known)
    except OmniError as err:
        print(f"omnilm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("omnilm: interrupted (the last complete checkpoint is kept; use --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
