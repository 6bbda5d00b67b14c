"""``pixellm chat``: interactive multi-turn chat about an image in the terminal."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pixellm.cli.cli_args import add_model_args

    p = subparsers.add_parser("chat", help="interactive multi-turn chat about an image",
                              description="Chat about an image. Commands: /image PATH, /reset, /save DIR, "
                                          "/help, /quit.")
    add_model_args(p)
    p.add_argument("--image", default=None, help="image to start with (or /image PATH in the chat)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pixellm.cli.cli_args import load_predictor
    from pixellm.serve.chat import run_chat

    return run_chat(load_predictor(args), image=args.image)
