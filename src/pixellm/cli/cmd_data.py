"""``pixellm data refer2muse|semseg2muse|synth|stats``: conversion, synthetic data, statistics."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="convert data sets, make the synthetic set, statistics")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    refer = sub.add_parser("refer2muse", help="refCOCO/+/g (refer format) -> multi-referring MUSE JSON")
    refer.add_argument("--refer-root", required=True, metavar="DIR", help="folder holding DATASET/refs(SPLIT_BY).p")
    refer.add_argument("--dataset", default="refcoco", help="refcoco, refcoco+, refcocog, refclef (default refcoco)")
    refer.add_argument("--split-by", default="unc", help="unc, umd, google (default unc)")
    refer.add_argument("--split", default="val", help="train, val, testA, testB, test (default val)")
    refer.add_argument("--out", required=True, metavar="X.json")
    _grouping(refer)
    refer.add_argument(
        "--sentences", choices=["random", "first", "all"], default="random",
        help="expression per target; 'all' (one question per expression) needs --max-targets 1",
    )
    refer.set_defaults(func=run_refer2muse)

    sem = sub.add_parser("semseg2muse", help="semantic-segmentation label maps -> multi-target MUSE JSON")
    sem.add_argument("--images", required=True, metavar="DIR", help="image folder")
    sem.add_argument("--labels", required=True, metavar="DIR", help="PNG label maps, same file stems")
    sem.add_argument("--classes", required=True, metavar="FILE", help="class names: text (one per line) or JSON list")
    sem.add_argument("--out", required=True, metavar="X.json")
    sem.add_argument("--offset", type=int, default=0, help="label value v is class v-offset (ADE20K: 1)")
    sem.add_argument("--ignore", type=int, nargs="*", default=[255], help="label values never used (default 255)")
    sem.add_argument("--min-area", type=int, default=1, help="drop classes with fewer pixels in an image")
    _grouping(sem)
    sem.set_defaults(func=run_semseg2muse)

    synth = sub.add_parser("synth", help="synthetic multi-target reasoning set (MUSE JSON + PNG)")
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--train", type=int, default=6000, help="training questions (default 6000)")
    synth.add_argument("--val", type=int, default=200, help="held-out questions (default 200)")
    synth.add_argument("--test", type=int, default=0, help="a second held-out split (default none)")
    synth.add_argument("--train-text", type=int, default=0,
                       help="a further training split, train_text.json, of every question kind but plain "
                            "referring, for a text-only data source (masks: false; docs/demo-rounds.md)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--questions-per-image", type=int, default=2)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)

    stats = sub.add_parser("stats", help="statistics of a MUSE-format file (supplement C.2): plots + summary.json")
    stats.add_argument("--data", required=True, metavar="X.json")
    stats.add_argument("--out", required=True, metavar="DIR")
    stats.add_argument("--tokenizer", metavar="PATH", help="count tokens with this tokenizer (file or folder)")
    stats.set_defaults(func=run_stats)


def _grouping(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-targets", type=int, default=1, help="fewest targets per question (default 1)")
    p.add_argument("--max-targets", type=int, default=3, help="most targets per question (default 3)")
    p.add_argument("--seed", type=int, default=0, help="grouping / expression choice")
    p.add_argument("--image-prefix", default="", help="prepended to each image file name (e.g. train2014/)")


def _report(records: list, out: str) -> None:
    questions = sum(len(r["questions"]) for r in records)
    targets = sum(len(a) for r in records for a in r["answers"])
    print(f"wrote {out}: {len(records)} images, {questions} questions, {targets} targets")


def run_refer2muse(args: argparse.Namespace) -> int:
    from pixellm.data.muse import save_muse
    from pixellm.data.refer import refer_to_muse

    records = refer_to_muse(
        args.refer_root, args.dataset, args.split_by, args.split,
        min_targets=args.min_targets, max_targets=args.max_targets, sentences=args.sentences,
        seed=args.seed, image_prefix=args.image_prefix, progress=True,
    )
    save_muse(records, args.out)
    _report(records, args.out)
    return 0


def run_semseg2muse(args: argparse.Namespace) -> int:
    from pixellm.data.muse import save_muse
    from pixellm.data.semseg import read_class_names, semseg_to_muse

    records = semseg_to_muse(
        args.images, args.labels, read_class_names(args.classes),
        offset=args.offset, ignore=tuple(args.ignore), min_area=args.min_area,
        min_targets=args.min_targets, max_targets=args.max_targets, seed=args.seed,
        image_prefix=args.image_prefix, progress=True,
    )
    save_muse(records, args.out)
    _report(records, args.out)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from pixellm.data.synth import REASONING_KIND_WEIGHTS, SynthConfig, write_synth

    splits = {"train": args.train, "val": args.val, "test": args.test, "train_text": args.train_text}
    splits = {k: v for k, v in splits.items() if v > 0}
    cfg = SynthConfig.for_size(args.size, questions_per_image=args.questions_per_image)
    text_cfg = dataclasses.replace(cfg, kind_weights=dict(REASONING_KIND_WEIGHTS))
    split_configs = {"train_text": text_cfg} if "train_text" in splits else None
    info = write_synth(args.out, splits, seed=args.seed, cfg=cfg, progress=not args.quiet,
                       split_configs=split_configs)
    parts = [f"{k} {v['questions']} questions / {v['images']} images" for k, v in info["splits"].items()]
    print(f"wrote {args.out}: " + ", ".join(parts))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from pixellm.data.stats import write_stats

    s = write_stats(args.data, args.out, args.tokenizer)
    t = s["targets_per_question"]
    print(
        f"{s['images']} images, {s['questions']} questions, {s['instances']} instances, "
        f"{s['categories']} categories; targets/question mean {t['mean']:.2f} max {t['max']}; wrote {args.out}"
    )
    return 0
