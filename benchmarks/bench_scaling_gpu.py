"""One-GPU scaling figures for docs/scaling.md: tokens/s, peak memory and the largest micro-batch
that fits, for the tiny preset and randomly initialised 7B / 13B-shaped PixelLM, 448 px, 512
tokens, bf16 autocast, LoRA (docs/training.md recipe: CLIP and LLM frozen), gradient checkpointing off / on.

One process on one GPU: model states are those of one replica (DDP); the per-GPU figure of 8-GPU
ZeRO-2 / FSDP is the measured activation part plus the sharded model states of the table in
docs/scaling.md. Weights are random (shapes are what matters). Writes
``benchmarks/results/scaling_gpu.json``. Not run yet (written on a CPU-only machine; smoke-tested
there with ``--device cpu --presets tiny --batches 1,2``).

    python benchmarks/bench_scaling_gpu.py [--presets tiny,pixellm-7b,pixellm-13b] [--batches 1,2,4,8,16]

The model is rebuilt for every setting (a random 13B takes a while to initialise): under a
per-command time limit, run one preset per call (``--presets pixellm-7b``); the results file
holds the last call's runs only.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scaling_gpu.json"


def make_batches(processor, n: int, batch: int, tokens: int, device) -> list[dict]:
    """``n`` training batches at 448 px, every sequence extended to ``tokens`` with unsupervised
    filler text (the released max length is 512)."""
    import torch

    from pixellm.data.synth import SynthConfig, write_synth
    from pixellm.train.config import DataSource
    from pixellm.train.data import build_training_data, collate_train, to_device

    with tempfile.TemporaryDirectory() as tmp:
        write_synth(tmp, {"train": n * batch}, seed=0, cfg=SynthConfig.for_size(448))
        ds, _ = build_training_data([DataSource(kind="synth", path=str(Path(tmp) / "train.json"))], processor, 0)
        out = []
        for i in range(n):
            b = collate_train([ds[j] for j in range(i * batch, (i + 1) * batch)], processor.pad_token_id)
            b.pop("skips")
            extra = tokens - b["input_ids"].shape[1]
            if extra > 0:
                filler = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize("the")[0])
                bsz = b["input_ids"].shape[0]
                b["input_ids"] = torch.cat([b["input_ids"], torch.full((bsz, extra), filler)], 1)
                b["attention_mask"] = torch.cat([b["attention_mask"], torch.ones(bsz, extra, dtype=b["attention_mask"].dtype)], 1)
                b["labels"] = torch.cat([b["labels"], torch.full((bsz, extra), -100)], 1)
            out.append(to_device(b, device))
    return out


def run(preset: str, batch: int, checkpointing: bool, steps: int, tokens: int, device) -> dict:
    import torch

    from pixellm.build import build_processor
    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM
    from pixellm.train.lora import apply_lora, lora_settings
    from pixellm.train.setup import enable_gradient_checkpointing

    cfg = PixelLMConfig.from_preset(preset)
    processor = build_processor(cfg, max_length=tokens)
    with torch.device(device):
        model = PixelLMForCausalLM(cfg)
    apply_lora(model, lora_settings(8, 16, 0.05, ["q_proj", "v_proj"]))
    model.configure_trainable()
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batches = make_batches(processor, steps, batch, tokens, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    times = []
    for b in batches:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**b, return_logits=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    seq = batches[0]["input_ids"].shape[1]
    return {"preset": preset, "batch": batch, "gradient_checkpointing": checkpointing, "seq_len": int(seq),
            "seconds_per_step": round(step, 3), "tokens_per_second": round(batch * seq / step, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,pixellm-7b,pixellm-13b")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # `make bench` runs every bench_*.py, also on CPU-only machines: nothing to measure there.
        print("bench_scaling_gpu: no CUDA device; nothing measured (use --device cpu for a smoke test)")
        return
    runs, largest = [], {}
    for preset in args.presets.split(","):
        for ck in (False, True):
            for batch in (int(b) for b in args.batches.split(",")):
                try:
                    runs.append(run(preset, batch, ck, args.steps, args.tokens, device))
                    largest[f"{preset}/checkpointing={ck}"] = batch
                    print(runs[-1], flush=True)
                except torch.OutOfMemoryError:
                    print(preset, batch, ck, "out of memory", flush=True)
                    break
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    result = {"benchmark": "one-GPU training step, bf16 autocast, LoRA, 448 px", "tokens": args.tokens,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "runs": runs, "largest_micro_batch_that_fits": largest}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(largest))


if __name__ == "__main__":
    main()
