"""``pixellm convert-released``: import a released PixelLM ``hf_model`` folder plus CLIP."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-released",
        help="import a released PixelLM hf_model folder (plus a CLIP folder)",
        description="Convert the authors' released hf_model folder (LoRA merged; config.json, weights, "
        "tokenizer) and a CLIP folder into this project's format (save_pretrained + processor).",
    )
    parser.add_argument("--src", required=True, help="released hf_model folder")
    parser.add_argument("--vision", required=True, help="CLIP folder (or hub name), e.g. clip-vit-large-patch14-336")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype of the output (auto = the checkpoint's)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pixellm.tools.convert_released import convert_released

    summary = convert_released(args.src, args.vision, args.out, dtype=args.dtype)
    print(f"read {summary.released_tensors} tensors from {', '.join(summary.weight_files)} "
          f"+ {summary.vision_tensors} CLIP tensors from {args.vision}")
    if summary.dropped_keys:
        print(f"dropped {len(summary.dropped_keys)} unused released tensors "
              "(prompt-encoder point/mask weights, rotary inv_freq buffers)")
    if summary.initialised:
        print(f"initialised {', '.join(summary.initialised)} to the released values (1/N, 1/L)")
    if not summary.processor_saved:
        print("warning: no tokenizer in --src; the output has no processor files")
    print(f"wrote {summary.dtype} model to {summary.out}")
    return 0
