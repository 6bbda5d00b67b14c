"""Command line: ``pixellm <command> ...``.

Every module ``pixellm/cli/cmd_*.py`` registers one top-level command through
``register(subparsers)`` and sets ``func`` on its parser. Command modules import heavy
libraries inside their handlers, so ``pixellm --help`` stays fast. Handlers are thin: they
parse arguments and call a library function that the tests call too.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from pixellm.errors import PixelLMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixellm", description="PixelLM: multi-target reasoning segmentation with an LMM."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    package = importlib.import_module("pixellm.cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"pixellm.cli.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("pixellm: interrupted", file=sys.stderr)
        return 130
    except (PixelLMError, FileNotFoundError, ValueError) as err:
        if args.debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"pixellm {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return int(result or 0)
