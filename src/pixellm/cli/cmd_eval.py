"""``pixellm eval muse|refer``: metrics for a prediction file against MUSE-format ground truth."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate predictions (MUSE protocol or ordered referring)")
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    muse = sub.add_parser("muse", help="MUSE protocol: Hungarian matching, judge, gated gIoU/cIoU")
    _common(muse)
    muse.add_argument(
        "--judge",
        choices=["oracle", "embedding", "openai"],
        default="oracle",
        help="who scores each mention: oracle (mask quality only), embedding (offline MiniLM), openai (chat API)",
    )
    muse.add_argument("--judge-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    muse.add_argument("--judge-model", help="model name for the openai judge")
    muse.add_argument(
        "--judge-cache", help="SQLite reply cache (default ~/.cache/pixellm/judge_cache.sqlite)"
    )
    muse.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request (default 60)")
    muse.add_argument("--judge-retries", type=int, default=5, help="retries with back-off (default 5)")
    muse.add_argument("--details", action="store_true", help="add per-sample results to the metrics JSON")
    muse.add_argument(
        "--protocol", dest="muse_protocol", choices=["muse", "authors"], default="muse",
        help="muse: the paper's protocol (default); authors: the arithmetic of the authors' released "
             "evaluation code, to compare with published numbers (docs/evaluation.md lists the differences)",
    )
    muse.set_defaults(func=run_muse)

    refer = sub.add_parser("refer", help="ordered gIoU/cIoU (i-th mask vs i-th target), N-acc/T-acc")
    _common(refer)
    refer.set_defaults(func=run_refer)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gt", action="append", required=True, metavar="GT.json", help="ground truth (repeatable)"
    )
    p.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="PRED.jsonl",
        help="predictions, one per --gt, same order",
    )
    p.add_argument("--split", action="append", help="split name per --gt (default: the GT file name)")
    p.add_argument("--out", metavar="METRICS.json", help="write the metrics JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parts(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    from pixellm.errors import InputError

    if len(args.gt) != len(args.pred):
        raise InputError(f"{len(args.gt)} --gt but {len(args.pred)} --pred (give one --pred per --gt)")
    splits = args.split or [None] * len(args.gt)
    if len(splits) != len(args.gt):
        raise InputError(f"{len(splits)} --split for {len(args.gt)} --gt")
    return list(zip(args.gt, args.pred, splits))


def run_muse(args: argparse.Namespace) -> int:
    from pixellm.eval.muse_protocol import evaluate_muse_splits
    from pixellm.eval.report import format_table, write_metrics

    options: dict[str, Any] = {}
    if args.judge == "openai":
        options = {
            "url": args.judge_url,
            "model": args.judge_model,
            "cache_path": args.judge_cache,
            "timeout": args.judge_timeout,
            "retries": args.judge_retries,
        }
    if args.muse_protocol == "authors":
        from pixellm.eval.authors_protocol import evaluate_muse_authors

        metrics = evaluate_muse_authors(_parts(args), details=args.details)  # no judge in their code
    else:
        metrics = evaluate_muse_splits(
            _parts(args), args.judge, judge_options=options, details=args.details, progress=not args.quiet
        )
    print(format_table(metrics))
    warn_missing(metrics)
    if args.out:
        write_metrics(metrics, args.out)
    return 0


def warn_missing(metrics: dict[str, Any]) -> None:
    """A warning line when questions had no prediction line (scored as empty answers): an empty
    or partial prediction file otherwise looks like a real gIoU of 0."""
    import sys

    missing, total = int(metrics.get("missing", 0)), int(metrics.get("samples", 0))
    if missing:
        print(f"warning: {missing} of {total} questions have no prediction (scored as answered with no "
              "masks); is the prediction file complete and for this ground truth?", file=sys.stderr)


def run_refer(args: argparse.Namespace) -> int:
    from pixellm.eval.refer_metrics import evaluate_refer_splits
    from pixellm.eval.report import format_table, write_metrics

    metrics = evaluate_refer_splits(_parts(args), progress=not args.quiet)
    print(format_table(metrics))
    warn_missing(metrics)
    if args.out:
        write_metrics(metrics, args.out)
    return 0
