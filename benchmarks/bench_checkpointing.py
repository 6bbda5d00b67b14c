"""Memory saved by gradient checkpointing (``gradient_checkpointing: true``) on the CPU, tiny preset.

For each setting (checkpointing off / on, ``trainable`` pixellm+LoRA and all_but_vision), in its
own process: a few training steps (forward + backward + AdamW) on the demo's synthetic data, and
- ``saved_activation_mib``: bytes of the distinct tensors autograd keeps from the forward for the
  backward (weights excluded), measured with ``torch.autograd.graph.saved_tensors_hooks``: the
  memory checkpointing is meant to save, exact and independent of the allocator;
- ``step_peak_rss_mib``: peak resident memory of the process minus its resident memory before
  the first step (noisier: allocator caching);
- ``seconds_per_step`` (median; the recomputation costs about one extra LLM/CLIP forward).
Writes ``benchmarks/results/checkpointing.json``.

    python benchmarks/bench_checkpointing.py [--batch 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "checkpointing.json"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run(checkpointing: bool, trainable: str, batch: int, steps: int) -> dict:
    import torch

    from pixellm.data.synth import write_synth
    from pixellm.train.config import config_from_dict
    from pixellm.train.data import build_training_data, collate_train
    from pixellm.train.setup import build_model

    with tempfile.TemporaryDirectory() as tmp:
        write_synth(Path(tmp), {"train": batch * steps}, seed=0)
        cfg = config_from_dict({
            "preset": "tiny", "trainable": trainable, "lora": {"enabled": trainable == "pixellm"},
            "data": [{"name": "synth", "kind": "synth", "path": str(Path(tmp) / "train.json")}],
            "max_length": 160, "gradient_checkpointing": checkpointing, "precision": "fp32",
        })
        model, processor = build_model(cfg)
        dataset, _ = build_training_data(cfg.data, processor, 0)
        batches = []
        for s in range(steps):
            b = collate_train([dataset[i] for i in range(s * batch, (s + 1) * batch)], processor.pad_token_id)
            b.pop("skips")
            batches.append(b)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    before = rss_mib()
    times, saved_mib = [], []
    for b in batches:
        saved.clear()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**b, return_logits=False)
        saved_mib.append(sum(saved.values()) / 2**20)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"gradient_checkpointing": checkpointing, "trainable": trainable, "batch": batch,
            "seq_len": int(batches[0]["input_ids"].shape[1]),
            "saved_activation_mib": round(max(saved_mib), 1), "step_peak_rss_mib": round(peak - before, 1),
            "seconds_per_step": round(statistics.median(times[1:] or times), 3),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ck, trainable = args.child.split(":")
        print(json.dumps(one_run(ck == "on", trainable, args.batch, args.steps)))
        return
    runs = []
    for trainable in ("pixellm", "all_but_vision"):
        for ck in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", f"{ck}:{trainable}", "--batch", str(args.batch),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    savings = {}
    for trainable in ("pixellm", "all_but_vision"):
        off, on = (r for r in runs if r["trainable"] == trainable)
        savings[trainable] = {
            "saved_activation_fraction_kept": round(on["saved_activation_mib"] / off["saved_activation_mib"], 3),
            "slowdown": round(on["seconds_per_step"] / off["seconds_per_step"], 2),
        }
    result = {
        "benchmark": "gradient checkpointing, tiny preset, CPU fp32",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared 2-core machine: another engineer's jobs ran at the same time"},
        "runs": runs, "checkpointing_vs_not": savings,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(savings))


if __name__ == "__main__":
    main()
