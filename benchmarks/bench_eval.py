"""Benchmark: the MUSE protocol (oracle judge) on 1,000 questions x 4 GT and 4 predicted 480x640 masks.

Writes GT JSON and PRED.jsonl to a temporary folder, then times ``evaluate_muse`` on the files
(reading, exact matching on RLE run lengths, aggregation), side by side in the same process with
the decoded-pixel path as it ran before (every mask decoded, GT boxes computed for every
question), and checks that both give byte-identical metrics. Prints seconds, speed-up and peak
memory and writes ``benchmarks/results/eval.json`` with the machine's CPU capability.
Target: under 5 s, or 3x faster than the decoded-pixel path, on a 2-core AVX2 machine.

    .venv/bin/python benchmarks/bench_eval.py [--questions 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pixellm.data.masks import encode_rle
from pixellm.eval import evaluate_muse
from pixellm.eval.judges.base import JudgeItem
from pixellm.eval.judges.oracle import OracleJudge

H, W, MASKS = 480, 640, 4


def random_blob(rng: np.random.Generator) -> np.ndarray:
    """An ellipse of random centre and radii (realistic RLE run lengths)."""
    yy, xx = np.ogrid[:H, :W]
    cy, cx = rng.uniform(0, H), rng.uniform(0, W)
    ry, rx = rng.uniform(20, 160), rng.uniform(20, 200)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def jitter(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A prediction near a GT mask: shifted by a few pixels."""
    return np.roll(mask, (int(rng.integers(-15, 16)), int(rng.integers(-15, 16))), axis=(0, 1))


def make_data(folder: Path, questions: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    records, lines = [], []
    for i in range(questions):
        gt = [random_blob(rng) for _ in range(MASKS)]
        preds = [jitter(rng, gt[j]) for j in rng.permutation(MASKS)]
        anns = [
            {"category_id": j, "category_name": f"thing{j}", "segmentation": encode_rle(m)}
            for j, m in enumerate(gt)
        ]
        records.append(
            {"height": H, "width": W, "questions": ["q"], "answers": [anns], "file_name": f"{i}.jpg"}
        )
        answer = " and ".join("the thing [SEG]" for _ in preds) + "."
        lines.append(
            json.dumps({"image": i, "question": 0, "answer": answer, "masks": [encode_rle(m) for m in preds]})
        )
    gt_path, pred_path = folder / "val.json", folder / "pred.jsonl"
    gt_path.write_text(json.dumps(records))
    pred_path.write_text("\n".join(lines) + "\n")
    return gt_path, pred_path


class EagerBoxesOracle(OracleJudge):
    """The oracle judge, but reading every GT box as the evaluation did before boxes were lazy."""

    def score(self, item: JudgeItem) -> list[float]:
        list(item.boxes)
        return super().score(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = make_data(Path(tmp), args.questions)
        start = time.perf_counter()
        before = evaluate_muse(gt_path, pred_path, judge=EagerBoxesOracle(), decode=True)
        seconds_before = time.perf_counter() - start
        start = time.perf_counter()
        metrics = evaluate_muse(gt_path, pred_path, judge="oracle")
        seconds = time.perf_counter() - start
        before["judge"] = metrics["judge"]
        identical = json.dumps(before, sort_keys=True) == json.dumps(metrics, sort_keys=True)
        if not identical:
            raise SystemExit("metrics differ between the run-length and the decoded-pixel paths")
        # Peak Python-heap memory of a second (traced, slower) run; the RSS peak covers the process.
        tracemalloc.start()
        evaluate_muse(gt_path, pred_path, judge="oracle")
        peak_traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    import torch

    result = {
        "benchmark": "muse_protocol_oracle",
        "questions": args.questions,
        "masks_per_question": {"gt": MASKS, "pred": MASKS},
        "image_size": [H, W],
        "seconds": round(seconds, 3),
        "seconds_decoded_pixels": round(seconds_before, 3),
        "speedup": round(seconds_before / seconds, 2),
        "metrics_identical": identical,
        "questions_per_second": round(args.questions / seconds, 1),
        "peak_traced_mib": round(peak_traced / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gIoU": metrics["gIoU"],
        "cIoU": metrics["cIoU"],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.questions} questions: {seconds:.2f} s (decoded-pixel path {seconds_before:.2f} s, "
        f"{result['speedup']}x, metrics identical), {result['cpu_capability']}, peak traced {result['peak_traced_mib']} MiB, "
        f"peak RSS {result['peak_rss_mib']} MiB (gIoU={metrics['gIoU']:.4f} cIoU={metrics['cIoU']:.4f})"
    )


if __name__ == "__main__":
    main()
