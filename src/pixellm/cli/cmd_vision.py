"""``pixellm vision-pretrain``: stage 1, the vision tower learns shapes from segmentation masks."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vision-pretrain",
        help="pre-train a random preset's vision tower on segmentation masks (stage 1 of the demo)",
        description="Train the preset's CLIP tower to classify every pixel of each patch from the patch token "
        "(and regress its object's centroid and size), on a MUSE-format JSON with category_id and segmentation "
        "per annotation. Writes a CLIP vision folder for `vision_weights`; a rerun with the same data, model "
        "and recipe reuses it.",
    )
    p.add_argument("--data", required=True, help="MUSE-format JSON (e.g. data/synth/train.json)")
    p.add_argument("--out", required=True, help="output CLIP folder")
    p.add_argument("--preset", default="tiny-demo", help="random preset whose tower is trained (default tiny-demo)")
    p.add_argument("--steps", type=int, default=None, help="updates (default: the demo recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per update (default: the demo recipe's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the demo recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model and of the image order")
    p.add_argument("--probe-random-tower", action="store_true",
                   help="also score the shape probe on the random tower before training, a baseline "
                   "(one more pass over the images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from pixellm.demo import vision_stage
    from pixellm.errors import ConfigError
    from pixellm.train.config import TrainConfig
    from pixellm.train.vision_pretrain import VisionPretrainConfig

    data = Path(args.data)
    if not data.is_file():
        raise ConfigError(f"--data {data}: file not found")
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    for name, value in given.items():
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    recipe = dataclasses.replace(VisionPretrainConfig(seed=args.seed), **{k: v for k, v in given.items() if v is not None})
    cfg = TrainConfig(preset=args.preset, seed=args.seed, trainable="all_but_vision")
    cfg.lora.enabled = False
    summary = vision_stage(cfg, data, Path(args.out), recipe, progress=not args.no_progress,
                           probe_random_tower=args.probe_random_tower)
    print(f"vision tower: {args.out} (held-out pixel accuracy {summary.get('held_out_pixel_accuracy') or 0:.3f})")
    return 0
