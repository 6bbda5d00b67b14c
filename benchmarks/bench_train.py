"""Training throughput (samples/s) and peak memory of the tiny preset on this machine.

Runs the demo recipe (batch 32, all but CLIP trainable, lr 1e-3) on a small synthetic set for a
few steps, once with bf16 autocast and once in fp32, each in its own process so that peak RSS is
per setting. The first steps (allocator / kernel warm-up) are excluded from the throughput.
Writes ``benchmarks/results/train.json``.

    python benchmarks/bench_train.py [--steps 30] [--warmup 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def one_run(precision: str, steps: int, warmup: int, batch: int) -> dict:
    """Train ``warmup + steps`` steps in this process; time the last ``steps``."""
    import torch

    from pixellm.data.synth import write_synth
    from pixellm.train.demo import demo_config
    from pixellm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        write_synth(Path(tmp) / "data", {"train": 2000, "val": 10}, seed=0)
        cfg = demo_config(tmp, steps=warmup + steps)
        cfg.precision, cfg.batch_size, cfg.effective_batch = precision, batch, batch
        cfg.val_data, cfg.progress, cfg.tensorboard = None, False, False
        cfg.save_every = cfg.val_every = 10**6
        cfg.log_every = 1
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        result = trainer.run()
        wall = time.perf_counter() - t0
        # history has one entry per step (log_every=1) with that step's samples/s
        timed = result.history[warmup:]
        seconds = sum(batch / h["samples_per_s"] for h in timed)
        return {
            "precision": precision,
            "batch": batch,
            "timed_steps": len(timed),
            "samples_per_second": round(len(timed) * batch / seconds, 2),
            "seconds_per_step": round(seconds / len(timed), 3),
            "final_loss": round(result.history[-1]["loss"], 4),
            "wall_seconds_incl_setup_and_export": round(wall, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args.steps, args.warmup, args.batch)))
        return
    runs = []
    for precision in ("bf16", "fp32"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", precision, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--batch", str(args.batch)],
            capture_output=True, text=True, check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1])
    load = os.getloadavg()
    result = {
        "benchmark": "tiny preset training (demo recipe)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1_5_15": [round(x, 2) for x in load],
                    "note": "shared 2-core machine: other jobs may have run at the same time"},
        "runs": runs,
        "bf16_speedup": round(runs[0]["samples_per_second"] / runs[1]["samples_per_second"], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bf16: {runs[0]['samples_per_second']} samples/s, peak RSS {runs[0]['peak_rss_mib']} MiB; "
          f"fp32: {runs[1]['samples_per_second']} samples/s, peak RSS {runs[1]['peak_rss_mib']} MiB -> {RESULTS}")


if __name__ == "__main__":
    main()
