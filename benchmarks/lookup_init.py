"""Does a from-scratch tiny LLaMA learn to look a named object up among image tokens, and how does
that depend on its initialisation scale and learning rate?

The task isolates what the demo's generated answers fail at (``docs/training.md``, "The demo"):
16 "image tokens" (a fixed random feature per colour-shape category in the cells that hold an
object, a background feature elsewhere, Gaussian noise on all) go through a trainable two-layer
projector into a 4-layer, 128-wide LLaMA (the ``tiny-demo`` LLM's shape), followed by the
question "is there a <colour> <shape> ?"; the model answers yes / no at the last position (half
of the questions name a category that is present). Only the answer token is supervised. AdamW
(betas 0.9 / 0.95), 50 warm-up steps then linear decay, gradient clipping at 1, batch 16, as in
the demo. Held-out accuracy on 500 fresh scenes is printed every 100 steps; chance is ~0.5.

    python benchmarks/lookup_init.py    # init 0.02 / 0.09 / 0.15 x lr 5e-4 / 2e-3, seeds 0 and 1
    python benchmarks/lookup_init.py --init 0.09 --lr 2e-3 --seeds 0 1 2

Writes ``benchmarks/results/lookup_init.json`` (final accuracy per setting and seed, with the
accuracy curve, the command and the CPU capability) when more than one setting runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "lookup_init.json"
COLOURS, SHAPES, CELLS, FEATURE_DIM = 5, 3, 16, 128
# token ids: 0 pad, 1 bos, 2..6 colours, 7..9 shapes, 10..13 "is there a ?", 14 yes, 15 no
VOCAB, YES, NO = 32, 14, 15


class LookupTask:
    """Scenes of 1-5 objects of distinct categories, each in its own cell of a 4 x 4 grid."""

    def __init__(self, noise: float = 0.5, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)  # the "vision tower": fixed for every run
        n = COLOURS * SHAPES
        self.category = torch.randn(n, FEATURE_DIM, generator=g)
        colour, shape = torch.randn(COLOURS, FEATURE_DIM, generator=g), torch.randn(SHAPES, FEATURE_DIM, generator=g)
        cats = torch.arange(n)
        self.category += 0.3 * colour[cats // SHAPES] + 0.3 * shape[cats % SHAPES]
        self.background = torch.randn(FEATURE_DIM, generator=g)
        self.noise = noise

    def batch(self, g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = COLOURS * SHAPES
        feats, questions, answers = [], [], []
        for _ in range(size):
            k = int(torch.randint(1, 6, (1,), generator=g))
            cats = torch.randperm(n, generator=g)[:k]
            x = self.background.repeat(CELLS, 1)
            x[torch.randperm(CELLS, generator=g)[:k]] = self.category[cats]
            x = x + self.noise * torch.randn(CELLS, FEATURE_DIM, generator=g)
            present = bool(torch.rand(1, generator=g) < 0.5)
            pool = sorted(cats.tolist()) if present else sorted(set(range(n)) - set(cats.tolist()))
            q = pool[int(torch.randint(len(pool), (1,), generator=g))]
            feats.append(x)
            questions.append([10, 11, 12, 2 + q // SHAPES, 7 + q % SHAPES, 13])
            answers.append(YES if present else NO)
        return torch.stack(feats), torch.tensor(questions), torch.tensor(answers)


class LookupModel(nn.Module):
    """Projector + LLaMA reading ``<bos> <16 image tokens> <question>``."""

    def __init__(self, init: float, hidden: int = 128, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            intermediate_size=344 * hidden // 128, vocab_size=VOCAB, max_position_embeddings=128,
            tie_word_embeddings=False, initializer_range=init, attn_implementation="eager",
        )
        self.llm = LlamaForCausalLM(cfg)
        self.projector = nn.Sequential(nn.Linear(FEATURE_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, feats: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        embed = self.llm.get_input_embeddings()
        bos = embed(torch.ones(len(questions), 1, dtype=torch.long))
        x = torch.cat([bos, self.projector(feats), embed(questions)], 1)
        return self.llm(inputs_embeds=x).logits[:, -1, YES:NO + 1]


def train_once(init: float, lr: float, seed: int, steps: int = 600, batch: int = 16) -> list[float]:
    """Held-out accuracy every 100 steps (first entry: before training)."""
    torch.manual_seed(seed)
    task = LookupTask()
    model = LookupModel(init)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, 1 - s / steps))
    g, held = torch.Generator().manual_seed(seed), task.batch(torch.Generator().manual_seed(999), 500)
    curve = []
    for step in range(steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                pred = model(held[0], held[1]).argmax(-1)
            curve.append(round((pred == held[2] - YES).float().mean().item(), 3))
        if step == steps:
            break
        feats, questions, answers = task.batch(g, batch)
        loss = nn.functional.cross_entropy(model(feats, questions), answers - YES)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=float, nargs="*", default=[0.02, 0.09, 0.15])
    parser.add_argument("--lr", type=float, nargs="*", default=[5e-4, 2e-3])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default with several settings: {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    t0 = time.perf_counter()
    for init in args.init:
        for lr in args.lr:
            for seed in args.seeds:
                curve = train_once(init, lr, seed, args.steps)
                runs.append({"init": init, "lr": lr, "seed": seed, "final_accuracy": curve[-1], "curve": curve})
                print(f"init {init:<5} lr {lr:<6} seed {seed}: accuracy every 100 steps {curve}", flush=True)
    out = args.out or (RESULTS if len(args.init) * len(args.lr) > 1 else None)
    if out:
        result = {
            "command": " ".join(["python", "benchmarks/lookup_init.py", *sys.argv[1:]]),
            "steps": args.steps, "batch": 16, "seconds": round(time.perf_counter() - t0),
            "machine": platform.processor() or platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
            "torch": torch.__version__, "runs": runs,
        }
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
