"""``pixellm datagen generate|filter``: MUSE-style data through an OpenAI-compatible chat API."""

from __future__ import annotations

import argparse
import json


def _add_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    p.add_argument("--model", required=True, help="model name sent to the endpoint")
    p.add_argument("--image-root", default=None, help="folder that image file names are relative to")
    p.add_argument("--no-image", action="store_true", help="send only text (instances and boxes)")
    p.add_argument("--attempts", type=int, default=2, help="requests per item when replies are invalid")
    p.add_argument("--retries", type=int, default=5, help="retries with exponential back-off per request")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--json-mode", action="store_true", help="ask for response_format=json_object")
    p.add_argument("--cache", default=None, help="reply cache (SQLite; default OUT.cache.sqlite)")
    p.add_argument("--no-progress", action="store_true")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datagen",
        help="MUSE-style question-answer generation and filtering through a chat API",
        description="Generate MUSE-format question-answer pairs with a multimodal chat model and filter "
        "out vague ones (API key from $OPENAI_API_KEY). Replies are cached: re-runs resume.",
    )
    sub = parser.add_subparsers(dest="datagen_command", metavar="ACTION", required=True)

    gen = sub.add_parser("generate", help="generate question-answer pairs per image")
    gen.add_argument("--images", required=True, help="MUSE JSON or COCO instances JSON with boxes")
    gen.add_argument("--out", required=True, help="output MUSE JSON")
    gen.add_argument("--limit", type=int, default=None, help="only the first N images")
    gen.add_argument("--questions-per-image", type=int, default=1)
    gen.add_argument("--min-instances", type=int, default=2, help="skip images with fewer instances")
    gen.add_argument("--min-targets", type=int, default=1, help="reject pairs with fewer targets")
    _add_api_args(gen)
    gen.set_defaults(func=_generate)

    flt = sub.add_parser("filter", help="drop vague pairs and pairs that omit equivalent instances")
    flt.add_argument("--data", required=True, help="input MUSE JSON")
    flt.add_argument("--out", required=True, help="output MUSE JSON with the kept pairs")
    flt.add_argument("--report", default=None, help="JSON with every pair's verdict")
    flt.add_argument("--keep-unjudged", action="store_true", help="keep pairs without a valid verdict")
    _add_api_args(flt)
    flt.set_defaults(func=_filter)


def _settings(args: argparse.Namespace):
    from pixellm.chat_client import ChatSettings

    return ChatSettings(
        api_url=args.api_url, model=args.model, timeout=args.timeout, retries=args.retries,
        temperature=args.temperature, max_tokens=args.max_tokens, json_mode=args.json_mode,
    )


def _generate(args: argparse.Namespace) -> int:
    from pixellm.tools.datagen import generate

    stats = generate(
        args.images, args.out, _settings(args), image_root=args.image_root, limit=args.limit,
        questions_per_image=args.questions_per_image, attempts=args.attempts,
        min_instances=args.min_instances, min_targets=args.min_targets, send_image=not args.no_image,
        cache=args.cache, progress=not args.no_progress,
    )
    print(json.dumps(stats.__dict__, indent=1))
    print(f"wrote {stats.pairs} pairs in {stats.records} records to {args.out}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from pixellm.tools.datagen import filter_pairs

    stats = filter_pairs(
        args.data, args.out, _settings(args), image_root=args.image_root, send_image=not args.no_image,
        attempts=args.attempts, keep_unjudged=args.keep_unjudged, report=args.report, cache=args.cache,
        progress=not args.no_progress,
    )
    print(json.dumps(stats.to_dict(), indent=1))
    print(f"kept {stats.kept} of {stats.pairs} pairs (dropped {100 * stats.dropped_fraction:.1f}%) -> {args.out}")
    return 0
