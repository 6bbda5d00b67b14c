"""``pixellm flops``: TFLOPs of one inference of PixelLM or LISA (counted on the meta device)."""

from __future__ import annotations

import argparse
import json

PRESETS = ("pixellm-7b", "pixellm-13b", "lisa-7b", "lisa-13b")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="TFLOPs of one inference (PixelLM or LISA)",
        description="Count the FLOPs of one inference part by part (vision encoder, projectors, LLM "
        "prefill and cached decoding, decoder; SAM for LISA) with torch's FlopCounterMode on the meta "
        "device. Nothing is downloaded or allocated.",
    )
    parser.add_argument("--preset", required=True, choices=PRESETS)
    parser.add_argument("--tokens", type=int, default=512, help="generated tokens (paper: 512)")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt text tokens besides the image")
    parser.add_argument("--targets", type=int, default=1, help="targets decoded into masks")
    parser.add_argument("--json", action="store_true", help="print JSON with per-part figures")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pixellm.errors import ConfigError
    from pixellm.tools.flops import preset_flops

    if args.tokens < 1 or args.text_tokens < 0 or args.targets < 0:
        raise ConfigError("--tokens must be >= 1, --text-tokens and --targets >= 0")
    report = preset_flops(args.preset, args.tokens, args.text_tokens, args.targets)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0
