"""``pixellm demo``: synthetic data -> train the tiny preset on the CPU -> MUSE evaluation."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="make synthetic data, train the tiny preset on the CPU and evaluate it (MUSE protocol)",
        description="Generate the synthetic multi-target reasoning set, train the tiny preset from scratch on "
        "the CPU, answer the held-out questions and evaluate them with the MUSE protocol (oracle judge). "
        "Writes DIR/metrics.json, DIR/report.md, DIR/examples/ and DIR/checkpoint/. Last line: gIoU=<x> cIoU=<y>.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training run")
    p.add_argument("--train-questions", type=int, default=None,
                   help="training questions to generate, 2 per image (default: the demo's 8000); "
                        "scale it with --steps on a faster machine")
    p.add_argument("--val-questions", type=int, default=None,
                   help="held-out questions to generate and evaluate, 2 per image (default: the demo's 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pixellm.errors import ConfigError

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.train_questions is not None and args.train_questions < 2:
        raise ConfigError(f"--train-questions must be >= 2, got {args.train_questions}")
    if args.val_questions is not None and args.val_questions < 2:
        raise ConfigError(f"--val-questions must be >= 2, got {args.val_questions}")
    from pixellm.demo import TRAIN_QUESTIONS, VAL_QUESTIONS, run_demo

    metrics = run_demo(args.out, steps=args.steps, seed=args.seed, progress=not args.no_progress,
                       train_questions=args.train_questions or TRAIN_QUESTIONS,
                       val_questions=args.val_questions or VAL_QUESTIONS)
    tf = metrics.get("teacher_forced", {})
    print(f"report: {args.out}/report.md (teacher-forced gIoU={tf.get('gIoU', 0):.4f} cIoU={tf.get('cIoU', 0):.4f})")
    print(f"gIoU={metrics['gIoU']:.4f} cIoU={metrics['cIoU']:.4f}")
    return 0
