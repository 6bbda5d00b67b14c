"""``pixellm train --config FILE.yaml [key=value ...]``: train (one process, or many under
``accelerate launch`` / ``torchrun``); ``--resume`` continues from the newest complete checkpoint.
``pixellm train --merge-lora SRC --out DST`` folds LoRA adapters into a plain HF-format model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train PixelLM (YAML config + key=value overrides; --resume)",
        description="Train PixelLM with the recipe in a YAML config (see configs/). Overrides use dots for "
        "nested keys, e.g. optim.lr=1e-3 lora.r=16 steps=100. Run several processes with "
        "`accelerate launch --config_file configs/accelerate/ddp.yaml -m pixellm train ...` or torchrun.",
    )
    p.add_argument("--config", help="YAML training config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir")
    p.add_argument("--export", default=None, help="folder for the final model + processor (default OUTPUT_DIR/final)")
    p.add_argument("--merge-lora", default=None, metavar="SRC",
                   help="instead of training: merge the LoRA adapters of the saved model SRC (needs --out)")
    p.add_argument("--out", default=None, help="output folder of --merge-lora")
    from pixellm.cli.cli_args import add_pixel_limit_arg

    add_pixel_limit_arg(p)  # the same limit as predict / infer / serve (bad images are skipped, counted)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pixellm.errors import ConfigError
    from pixellm.processing.image_processing import set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels)
    if args.merge_lora:
        if not args.out:
            raise ConfigError("--merge-lora needs --out DIR")
        from pixellm.train.lora import merge_checkpoint

        merge_checkpoint(args.merge_lora, args.out)
        print(f"merged model written to {args.out}")
        return 0
    if not args.config:
        raise ConfigError("--config FILE.yaml is required (see configs/)")
    from pixellm.train.config import load_config
    from pixellm.train.trainer import train

    result = train(load_config(args.config, args.overrides), resume=args.resume, export_dir=args.export)
    if result.export_dir is not None:
        print(f"trained {result.step} steps ({result.samples_per_second:.1f} samples/s); model in {result.export_dir}")
    return 0
