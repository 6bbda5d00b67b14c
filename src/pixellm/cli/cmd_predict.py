"""``pixellm predict``: answer one question about one image, optionally with overlay + masks."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pixellm.cli.cli_args import add_model_args

    p = subparsers.add_parser("predict", help="answer a question about an image, with one mask per target",
                              description="Answer one question; --out writes overlay.png and prediction.json.")
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--question", required=True, help="question text")
    p.add_argument("--out", default=None, help="folder for overlay.png and prediction.json")
    p.add_argument("--json", action="store_true", help="print the prediction JSON instead of the answer")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import json

    from pixellm.cli.cli_args import load_predictor
    from pixellm.infer.outputs import prediction_json, write_prediction
    from pixellm.processing.image_processing import load_image, set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels)
    image = load_image(args.image)  # fail fast (one-line error) before loading the model
    result = load_predictor(args)(image, args.question)
    if args.out:
        write_prediction(result, image, args.out)
    print(json.dumps(prediction_json(result)) if args.json else result.answer)
    return 0
