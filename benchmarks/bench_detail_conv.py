"""The pixel detail path's convolutions, forward + backward, in NCHW against channels-last input.

``PixelDetailPath.features`` feeds its convolutions channels-last input (the layout then carries
through every block). This times one training step's worth of that work, the demo's shape
(batch 16, 64 x 64 pixels, 8 channels), both ways, with the median of ``--repeats`` and records the
CPU capability and threads next to the times. Writes ``benchmarks/results/detail_conv.json``.

    python benchmarks/bench_detail_conv.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_detail_conv.py --out benchmarks/results/detail_conv_avx2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_demo import machine  # CPU, capability, ISA caps and load, as bench_demo records them

from pixellm.model.detail import PixelDetailPath

RESULTS = Path(__file__).resolve().parent / "results" / "detail_conv.json"


def nchw_features(path: PixelDetailPath, pixel_values: torch.Tensor) -> torch.Tensor:
    """The same computation as ``path.features`` on plain NCHW tensors (the former layout)."""
    x = path.stem(pixel_values.contiguous())
    for block in path.blocks:
        x = x + block(x)
    return x


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):  # two warm-up calls
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.manual_seed(0)
    path = PixelDetailPath(args.channels, 64)
    pixels = torch.randn(args.batch, 3, args.size, args.size)

    def step(fn) -> None:
        path.zero_grad(set_to_none=True)
        fn(path, pixels).sum().backward()

    # alternate the two layouts so that a change in the machine's load hits both
    runs: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for _ in range(3):
        runs["nchw"].append(median_ms(lambda: step(nchw_features), args.repeats))
        runs["channels_last"].append(median_ms(lambda: step(PixelDetailPath.features), args.repeats))
    same = torch.allclose(nchw_features(path, pixels), path.features(pixels), atol=1e-5)
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "benchmark": "pixel detail path convolutions, forward + backward",
        "command": "python benchmarks/bench_detail_conv.py" + (f" --out {args.out}" if args.out != RESULTS else ""),
        "shape": {"batch": args.batch, "size": args.size, "channels": args.channels},
        "machine": {**machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "ms_per_step_median_of_repeats": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "best_ms": {k: round(v, 2) for k, v in best.items()},
        "speedup_channels_last": round(best["nchw"] / best["channels_last"], 2),
        "same_output_atol_1e-5": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
