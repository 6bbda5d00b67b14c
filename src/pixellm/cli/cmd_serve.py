"""``pixellm serve``: the gradio web demo."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pixellm.cli.cli_args import add_model_args

    p = subparsers.add_parser("serve", help="web demo: upload an image, ask, see coloured masks",
                              description="Serve the gradio web demo (needs the 'serve' extra: gradio).")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    p.add_argument("--max-pixels", type=int, dest="max_image_pixels",
                   help="same as --max-image-pixels (kept for older scripts)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import importlib.util

    from pixellm.errors import ConfigError

    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("gradio is not installed: pip install 'pixellm[serve]'")
    from pixellm.cli.cli_args import load_predictor
    from pixellm.serve.app import serve

    serve(load_predictor(args), host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0
