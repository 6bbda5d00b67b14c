"""Time per question of a training step with one question per sequence against ``pack_turns``.

The demo's stage-2 model and recipe (``pixellm.demo.demo_config``; random vision tower, fp32) on a
freshly written synthetic set (two questions per image). Each round trains one step of
``--batch`` single-question sequences and one of ``--packed-batch`` two-question conversations,
alternating in one process (so a change in machine load hits both alike), forward + backward +
AdamW, data encoding and collation included. Reports the median step and the time per question,
with the CPU capability and threads. Writes ``benchmarks/results/pack_turns.json``.

    python benchmarks/bench_pack_turns.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_pack_turns.py --threads 1 --out benchmarks/results/pack_turns_avx2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_demo import machine  # CPU, capability, ISA caps and load, as bench_demo records them

RESULTS = Path(__file__).resolve().parent / "results" / "pack_turns.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (after 4 warm-up rounds)")
    ap.add_argument("--batch", type=int, default=16, help="single-question sequences a step")
    ap.add_argument("--packed-batch", type=int, nargs="+", default=[16, 8],
                    help="two-question conversations a step (one or more sizes)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pixellm.data.synth import write_synth
    from pixellm.demo import demo_config
    from pixellm.train.data import build_training_data, collate_train
    from pixellm.train.trainer import Trainer, flush_denormals

    flush_denormals()
    tmp = Path(tempfile.mkdtemp())
    write_synth(tmp / "data", {"train": 2000}, seed=0)
    cfg = demo_config(tmp, steps=1000)
    cfg.vision_weights, cfg.val_data, cfg.precision = None, None, "fp32"
    cfg.progress, cfg.tensorboard = False, False
    cfg.save_every = cfg.val_every = cfg.log_every = 10**6
    trainer = Trainer(cfg)
    trainer._setup()
    trainer._start()
    model, optimizer, processor = trainer.model, trainer.optimizer, trainer.processor
    single, _ = build_training_data(cfg.data, processor, 0)
    packed, _ = build_training_data([dataclasses.replace(cfg.data[0], pack_turns=2)], processor, 0)
    arms = {"single": (single, args.batch)}
    arms.update({f"packed_{b}": (packed, b) for b in args.packed_batch})
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in arms}
    questions: dict[str, int] = {k: 0 for k in arms}
    for rnd in range(args.rounds + 4):
        for name, (ds, b) in arms.items():
            idx = torch.randint(0, len(ds), (b,), generator=gen).tolist()
            t0 = time.perf_counter()
            batch = collate_train([ds[i] for i in idx], processor.pad_token_id)
            batch.pop("skips")
            model(**batch, return_logits=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rnd >= 4:
                times[name].append(time.perf_counter() - t0)
                questions[name] += sum(1 + len(ds.sources[0][i].history) for i in idx)
    result = {
        "command": "python benchmarks/bench_pack_turns.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out"),
        "machine": {**machine(), "torch": torch.__version__, "threads": args.threads},
        "arms": {},
    }
    for name, (_, b) in arms.items():
        n = len(times[name])
        result["arms"][name] = {
            "sequences_per_step": b,
            "questions_per_step": questions[name] / n,
            "median_step_ms": round(statistics.median(times[name]) * 1e3, 1),
            "ms_per_question": round(sum(times[name]) / questions[name] * 1e3, 2),
        }
        print(name, result["arms"][name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
