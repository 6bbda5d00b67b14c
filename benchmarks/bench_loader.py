"""Samples/s of the training data loader alone (read JSON, decode PNG, resize, encode, collate),
with 0, 1 and 2 worker processes, against what a training step consumes.

Two data sets, both written by ``pixellm.data.synth``:
- MUSE-shaped: 20,000 questions on 640 x 640 images (4 questions per image, 2-6 targets, RLE
  masks), encoded for a 448 px model (the 7B / 13B presets' input; the tiny tokenizer stands in
  for LLaMA's), micro-batch 2 (the released per-GPU batch);
- the demo's set: 64 px images for the tiny preset, micro-batch 32.
The order is the trainer's (``MixedSampler``). Demand: the tiny preset's measured training
throughput (``benchmarks/results/train.json``); for GPUs, batch / step time, see docs/scaling.md.
Writes ``benchmarks/results/loader.json``.

    python benchmarks/bench_loader.py [--questions 20000] [--measure 1200] [--workers 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def loader_rate(dataset, sampler, batch: int, workers: int, measure: int, pad_id: int) -> dict:
    """Samples/s over ``measure`` samples after the first batch (worker start-up excluded)."""
    import torch

    from pixellm.train.data import collate_train

    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch, num_workers=workers,
                                         collate_fn=partial(collate_train, pad_token_id=pad_id))
    t_start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t_start
    n, t0 = 0, time.perf_counter()
    while n < measure:
        n += next(it)["input_ids"].shape[0]
    seconds = time.perf_counter() - t0
    del it
    return {"workers": workers, "batch": batch, "samples": n, "samples_per_second": round(n / seconds, 1),
            "first_batch_seconds": round(first, 2)}


def bench_set(name: str, folder: Path, questions: int, size: int, per_image: int, model_cfg, batch: int,
              measure: int, workers: list[int]) -> dict:
    from pixellm.build import build_processor
    from pixellm.data.mixing import MixedSampler
    from pixellm.data.synth import SynthConfig, write_synth
    from pixellm.train.config import DataSource
    from pixellm.train.data import build_training_data

    t0 = time.perf_counter()
    write_synth(folder, {"train": questions}, seed=0, cfg=SynthConfig.for_size(size, questions_per_image=per_image))
    made = time.perf_counter() - t0
    processor = build_processor(model_cfg, max_length=512)
    t0 = time.perf_counter()
    dataset, rates = build_training_data([DataSource(name=name, kind="synth", path=str(folder / "train.json"))],
                                         processor, seed=0)
    read = time.perf_counter() - t0
    runs = []
    for w in workers:
        sampler = MixedSampler(dataset.sizes, rates, 10**6, seed=0, batch_size=batch)
        runs.append(loader_rate(dataset, sampler, batch, w, measure, processor.pad_token_id))
        print(name, runs[-1], flush=True)
    images = len({s.image_path for s in dataset.sources[0]})
    return {"set": name, "questions": len(dataset), "images": images, "image_px": size,
            "model_input_px": model_cfg.image_size, "write_seconds": round(made, 1),
            "read_json_seconds": round(read, 2), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20000)
    parser.add_argument("--measure", type=int, default=1200, help="samples timed per setting")
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    from pixellm.model.configuration_pixellm import PixelLMConfig

    workers = [int(w) for w in args.workers.split(",")]
    sets = []
    with tempfile.TemporaryDirectory() as tmp:
        sets.append(bench_set("muse_shaped", Path(tmp) / "muse", args.questions, 640, 4,
                              PixelLMConfig.from_preset("pixellm-7b"), 2, args.measure, workers))
        sets.append(bench_set("demo_tiny", Path(tmp) / "demo", 2000, 64, 2, PixelLMConfig.from_preset("tiny"), 32,
                              args.measure, workers))
    train = json.loads((RESULTS / "train.json").read_text())
    demand = {r["precision"]: r["samples_per_second"] for r in train["runs"]}
    result = {
        "benchmark": "data loader alone (decode + resize + encode + collate), samples/s",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared 2-core machine: another engineer's jobs ran at the same time"},
        "sets": sets,
        "demand_tiny_training_samples_per_second": demand,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loader.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
