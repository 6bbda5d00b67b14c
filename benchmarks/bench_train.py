"""Training throughput (samples/s), peak memory and MFU of the tiny preset on this machine.

Runs the demo recipe on a small synthetic set for a few steps, once with bf16 autocast and once
in fp32, each in its own process so that peak RSS is per setting. The first steps (allocator /
kernel warm-up) are excluded. Each run also records the CPU capability PyTorch dispatches to, what
``precision: auto`` would choose here (and why), the FLOPs of one training step (forward +
backward, ``FlopCounterMode``), the peak fp32 GEMM FLOP/s measured in the same process, and the
ratio of achieved to peak FLOP/s (model FLOPs utilisation; also with the optimizer's matmuls
counted). The timed steps run with warm caches, as the demo's stage 2 runs after its first pass
over the data. Writes ``benchmarks/results/train.json``.

    python benchmarks/bench_train.py [--steps 30] [--warmup 5] [--batch 16]
    # the AVX2 class (no native bf16) on a newer CPU:
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_train.py --out benchmarks/results/train_avx2.json
    # one thread of it (what stands for a slower 2-core AVX2 CPU, docs/training.md):
    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_train.py --out benchmarks/results/train_avx2_1thread.json
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
    """Train ``warmup + steps`` steps in this process; time the last ``steps``.

    The steps run as the demo's stage 2 runs them after its first pass over the data: the frozen
    tower's features are in the feature cache (the demo's stage 1 puts them there) and the encoded
    samples in the sample cache. Without that, every step here would pay for the tower and the
    tokenizer, which the demo's 1400 steps mostly do not."""
    import torch

    from pixellm.data.synth import write_synth
    from pixellm.demo import demo_config
    from pixellm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        write_synth(Path(tmp) / "data", {"train": 2000, "val": 10}, seed=0)
        cfg = demo_config(tmp, steps=warmup + steps)
        cfg.precision, cfg.batch_size, cfg.effective_batch = precision, batch, batch
        cfg.val_data, cfg.progress, cfg.tensorboard = None, False, False
        cfg.vision_weights = None  # a random tower costs the same per step as the stage-1 one
        cfg.save_every = cfg.val_every = 10**6
        trainer = Trainer(cfg)
        trainer._setup()
        model = trainer.acc.unwrap_model(trainer.model)
        t0 = time.perf_counter()
        warm_caches(model, trainer.dataset, trainer.processor)
        warm_seconds = time.perf_counter() - t0
        trainer._start()
        for _ in range(warmup):
            trainer.train_step()
        step_times, optimizer_times = [], []
        optimizer_step = trainer.optimizer.step

        def timed_optimizer_step(*args, **kwargs):
            t = time.perf_counter()
            out = optimizer_step(*args, **kwargs)
            optimizer_times.append(time.perf_counter() - t)
            return out

        trainer.optimizer.step = timed_optimizer_step
        for _ in range(steps):
            t = time.perf_counter()
            trainer.train_step()
            step_times.append(time.perf_counter() - t)
        trainer.optimizer.step = optimizer_step
        step_s = sum(step_times) / steps
        # the FLOPs of the very batches that were timed (their padding differs from step to step)
        plan = trainer.sampler.rank_plan(0)[warmup * batch:(warmup + steps) * batch]
        flops = sum(step_flops(model, trainer.processor, trainer.dataset, plan[i:i + batch].tolist())
                    for i in range(0, len(plan), batch)) / steps
        opt_flops = optimizer_flops(trainer)
        peak = gemm_peak_flops()
        trainer.model = None
        trainer.close()
        return {
            "precision": precision,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "auto_would_choose": _auto_choice(),
            "step_gflop": round(flops / 1e9, 2),  # forward + backward, mean over the timed steps
            "optimizer_gflop": round(opt_flops / 1e9, 2),  # Muon's Newton-Schulz matmuls
            "achieved_gflop_per_s": round(flops / step_s / 1e9, 1),
            "fp32_gemm_peak_gflop_per_s": round(peak / 1e9, 1),
            # model FLOPs only (the convention): the optimizer's time counts, its FLOPs do not
            "mfu_vs_fp32_gemm_peak": round(flops / step_s / peak, 3),
            # every counted FLOP of the step (forward, backward and the optimizer's matmuls)
            "step_flops_utilisation": round((flops + opt_flops) / step_s / peak, 3),
            "batch": batch,
            "timed_steps": steps,
            "samples_per_second": round(batch / step_s, 2),
            "seconds_per_step": round(step_s, 4),
            "optimizer_seconds_per_step": round(sum(optimizer_times) / steps, 4),
            "cache_warm_seconds": round(warm_seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads(),
        }


def warm_caches(model, dataset, processor, chunk: int = 64) -> None:
    """One pass over the training set: every sample encoded (the sample cache) and every image's
    frozen-tower features computed (the feature cache), as after the demo's first pass."""
    import torch

    from pixellm.train.data import collate_train

    for start in range(0, len(dataset), chunk):
        items = collate_train([dataset[i] for i in range(start, min(start + chunk, len(dataset)))],
                              processor.pad_token_id)
        if model.vision_cache is not None:
            with torch.no_grad():
                model.encode_images(items["pixel_values"], items.get("resized_sizes"), items.get("original_sizes"))


def optimizer_flops(trainer) -> float:
    """FLOPs of one optimizer step (``FlopCounterMode``: its matmuls) on the current gradients;
    the parameters and the optimizer's state are put back afterwards."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.randn_like(p)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(trainer.optimizer.state_dict())
    with FlopCounterMode(display=False) as counter:
        trainer.optimizer.step()
    with torch.no_grad():
        for p, saved in zip(params, saved_params):
            p.copy_(saved)
    trainer.optimizer.load_state_dict(saved_state)
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _auto_choice() -> dict:
    from pixellm.train.precision import resolve_precision

    choice = resolve_precision("auto")
    return {"chosen": choice.name, "reason": choice.reason}


def step_flops(model, processor, dataset, indices: list[int]) -> float:
    """FLOPs of one training step (forward + backward) of ``model`` on the training samples
    ``indices`` (the trainer's own model, processor and dataset: nothing is built again)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixellm.tools.flops import count_cpu_attention
    from pixellm.train.data import collate_train

    count_cpu_attention()  # torch counts its CPU attention kernel as 0 FLOPs
    items = collate_train([dataset[i] for i in indices], processor.pad_token_id)
    items.pop("skips")
    with FlopCounterMode(display=False) as counter:
        model(**items, return_logits=False).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def gemm_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n x n matmul with this process's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
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
        "command": " ".join(["python", "benchmarks/bench_train.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_capability": runs[1]["cpu_capability"],
                    "isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                             "ONEDNN_MAX_CPU_ISA") if k in os.environ},
                    "load_average_1_5_15": [round(x, 2) for x in load],
                    "note": "shared 2-core machine: other jobs may have run at the same time"},
        "runs": runs,
        "bf16_speedup": round(runs[0]["samples_per_second"] / runs[1]["samples_per_second"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bf16: {runs[0]['samples_per_second']} samples/s, peak RSS {runs[0]['peak_rss_mib']} MiB; "
          f"fp32: {runs[1]['samples_per_second']} samples/s, peak RSS {runs[1]['peak_rss_mib']} MiB, "
          f"MFU {runs[1]['mfu_vs_fp32_gemm_peak']:.0%} -> {args.out}")


if __name__ == "__main__":
    main()
