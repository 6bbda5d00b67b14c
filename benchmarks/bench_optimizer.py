"""What one optimizer update costs on the demo model: AdamW against Muon on the LLM's matrices.

Times ``optimizer.step()`` over the ``tiny-demo`` model's trainable parameters (the demo's groups
and rates, random gradients) for ``optim.name: adamw`` and ``optim.name: muon`` (Newton-Schulz in
fp32, ``pixellm.train.muon``), and, for the same Muon matrices, torch's own ``torch.optim.Muon``,
whose iteration runs in bf16 (emulated, and slow, on a CPU without native bf16). Also counts the
Newton-Schulz FLOPs of one Muon update, which ``FlopCounterMode``'s forward + backward count of a
training step leaves out. Writes ``benchmarks/results/optimizer.json`` (or ``--out``).

    python benchmarks/bench_optimizer.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_optimizer.py --out benchmarks/results/optimizer_avx2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "optimizer.json"


def ns_flops(shape: torch.Size, steps: int = 5) -> int:
    """Matmul FLOPs of ``steps`` Newton-Schulz iterations on an m x n matrix (m <= n after the
    transpose): X X^T (2 m^2 n), G G (2 m^3), (.) X (2 m^2 n)."""
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m**3)


def time_steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int, warmup: int) -> float:
    """Median seconds of ``opt.step()`` (fresh random gradients outside the timing)."""
    times = []
    for i in range(warmup + steps):
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        t0 = time.perf_counter()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from pixellm.demo import demo_config
    from pixellm.train.schedule import lr_groups, make_optimizer
    from pixellm.train.setup import build_model

    cfg = demo_config("unused")
    cfg.vision_weights = None
    model, _ = build_model(cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    o = cfg.optim
    result: dict = {"machine": machine(), "torch_threads": torch.get_num_threads(),
                    "trainable_tensors": len(params), "median_seconds_per_step": {}}
    for name in ("adamw", "muon"):
        groups = lr_groups(named, o.lr, o.lr_scale, o.muon_params if name == "muon" else ())
        opt = make_optimizer(groups, name, o.lr, tuple(o.betas), o.weight_decay)
        result["median_seconds_per_step"][name] = round(time_steps(opt, params, args.steps, args.warmup), 5)
        if name == "muon":
            mats = [p for g in groups if g.get("muon") for p in g["params"]]
            result["muon_matrices"] = len(mats)
            result["newton_schulz_gflop_per_step"] = round(sum(ns_flops(p.shape) for p in mats) / 1e9, 3)
    if hasattr(torch.optim, "Muon"):  # torch >= 2.9: the same matrices, its bf16 iteration
        opt = torch.optim.Muon(mats, lr=o.lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        result["median_seconds_per_step"]["torch_optim_muon_matrices_only_bf16"] = round(
            time_steps(opt, mats, args.steps, args.warmup), 5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
