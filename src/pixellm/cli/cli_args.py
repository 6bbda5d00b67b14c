"""Command-line options shared by ``predict``, ``chat``, ``serve`` and ``infer`` (model loading
and decoding). Light at import time: torch is imported inside the functions."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model`` plus device/dtype and decoding options."""
    parser.add_argument("--model", required=True, help="model folder (save_pretrained of model + processor)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (auto: as saved)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    add_pixel_limit_arg(parser)
    parser.add_argument("--no-instruction", action="store_true",
                        help="do not append 'Please respond with segmentation mask.' to questions")


def add_pixel_limit_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels``: the one pixel limit of every command (image_processing.max_image_pixels)."""
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                        help="refuse images with more than N pixels, checked before decoding "
                             "(default: $PIXELLM_MAX_IMAGE_PIXELS or 40,000,000)")


def generation_options(args: argparse.Namespace) -> Any:
    from pixellm.infer.generation import GenerationOptions

    sample = args.temperature > 0
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens, do_sample=sample, temperature=args.temperature if sample else 1.0,
        top_p=args.top_p, seed=args.seed,
    )


def load_predictor(args: argparse.Namespace) -> Any:
    """``Predictor.from_pretrained`` with the command's options."""
    import torch

    from pixellm.infer.predictor import Predictor
    from pixellm.processing.image_processing import set_max_image_pixels

    set_max_image_pixels(getattr(args, "max_image_pixels", None))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    options = generation_options(args)
    options.validate()
    return Predictor.from_pretrained(
        args.model, device=device, dtype=dtype, options=options, add_instruction=not args.no_instruction
    )
