"""The demo's wall time per stage (install excluded), the machine's CPU capability and the metrics.

Runs ``pixellm demo`` in a subprocess with this environment (or records a finished run with
``--from DIR``) and writes one entry per CPU class into ``benchmarks/results/demo.json``:

    python benchmarks/bench_demo.py --label native
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python benchmarks/bench_demo.py --label avx2-capped
    # one thread, the estimate of a 2-vCPU AVX2 machine whose two threads share one core
    # (docs/training.md, "Measured"):
    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python benchmarks/bench_demo.py --label avx2-capped-1-thread
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "demo.json"
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def machine() -> dict:
    import torch

    from pixellm.train.precision import cpu_flags

    flags = cpu_flags() or set()
    model = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ},
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def record(folder: Path, wall: float | None) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    gen, tf = m["generated"], m["teacher_forced"]
    return {
        "machine": machine() | {"torch_threads": m.get("machine", {}).get("torch_threads")},
        "seconds_per_stage": m.get("seconds_per_stage"),
        "seconds_total_without_install": m.get("seconds_total"),
        "wall_seconds_of_the_command": wall,
        "precision": m["training"].get("precision"),
        "train_samples_per_second": m["training"]["samples_per_second"],
        "generated": {"gIoU": gen["gIoU"], "cIoU": gen["cIoU"]},
        "teacher_forced": {"gIoU": tf["gIoU"], "cIoU": tf["cIoU"]},
        "no_target": m.get("no_target"),
        "per_kind_generated_gIoU": {k: round(v["generated"]["gIoU"], 3) for k, v in m["per_kind"].items()},
        "vision_pretraining": m.get("vision_pretraining"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="key of this entry, e.g. native or avx2-capped")
    parser.add_argument("--from", dest="source", type=Path, default=None, help="record a finished demo folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    wall = None
    folder = args.source
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="pixellm-demo-"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pixellm", "demo", "--out", str(folder), "--seed", str(args.seed),
                        "--no-progress"], check=True)
        wall = round(time.perf_counter() - t0, 1)
    entry = record(folder, wall) | {"note": args.note}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.label] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({args.label: {k: entry[k] for k in ("seconds_per_stage", "generated", "teacher_forced")}}))


if __name__ == "__main__":
    main()
