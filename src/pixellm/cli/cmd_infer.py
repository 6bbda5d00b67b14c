"""``pixellm infer``: predictions for a whole split as PRED.jsonl (batched, resumable)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pixellm.cli.cli_args import add_model_args

    p = subparsers.add_parser(
        "infer", help="predict a whole split into PRED.jsonl",
        description="Predictions for every question of a split, one JSON line each (resumable: a restart "
                    "skips the lines already written).",
    )
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="muse:PATH.json[:IMAGE_ROOT] or refer:ROOT:DATASET:SPLIT_BY:SPLIT[:IMAGE_ROOT]")
    p.add_argument("--out", required=True, help="output PRED.jsonl (appended to when it exists)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--teacher-forced", action="store_true",
                   help="masks from the ground-truth answer text instead of generated answers")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image names that leave the image root (../ or absolute paths); "
                        "by default such questions are skipped and counted as failed")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pixellm.cli.cli_args import generation_options, load_predictor
    from pixellm.files import check_model_folder
    from pixellm.infer.split_inference import check_run_record, parse_data_spec, run_inference, run_record

    records, image_root, source = parse_data_spec(args.data)  # bad spec fails before the model loads
    # an --out written for other data / model / settings fails before the model loads too
    check_model_folder(args.model)
    check_run_record(Path(args.out), run_record(
        args.model, not args.no_instruction, records, source, args.teacher_forced, generation_options(args)
    ))
    summary = run_inference(
        load_predictor(args), records, args.out, image_root=image_root, source=source, batch_size=args.batch_size,
        teacher_forced=args.teacher_forced, limit=args.limit, allow_outside_root=args.allow_outside_root,
    )
    print(f"{summary.path}: {summary.written} written, {summary.resumed} already there, "
          f"{summary.failed} failed, {summary.total} questions")
    return 1 if summary.failed else 0
