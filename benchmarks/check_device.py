"""CPU vs accelerator agreement of the model (a device check, not a unit test: CI has no GPU).

For three random configurations (a small one, the same with the variant switches on, and the
``tiny`` preset) it runs one teacher-forced forward on the CPU and on the device in fp32 and
compares the loss and the mask logits, then runs one bf16-autocast training step on the device
and checks that every gradient is finite. Writes ``benchmarks/results/device.json``.

    python benchmarks/check_device.py [--device cuda]

Run from the repository root (it reuses the test suite's batch builder, ``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "device.json"


def check(name: str, cfg, device: str) -> dict:
    import torch
    from conftest import make_batch

    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    torch.manual_seed(0)
    model = PixelLMForCausalLM(copy.deepcopy(cfg)).eval()
    batch = make_batch(model.config, targets=(3, 1))
    on_device = {k: ([m.to(device) for m in v] if isinstance(v, list) else v.to(device)) for k, v in batch.items()}
    with torch.no_grad():
        ref = model(**batch)
        dev_model = copy.deepcopy(model).to(device)
        out = dev_model(**on_device)
    mask_diff = max((a - b.float().cpu()).abs().max().item() for a, b in zip(ref.pred_masks, out.pred_masks))
    dev_model.train()
    optimizer = torch.optim.AdamW([p for p in dev_model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = dev_model(**on_device).loss
    loss.backward()
    finite = all(torch.isfinite(p.grad).all().item() for p in dev_model.parameters() if p.grad is not None)
    optimizer.step()
    return {"config": name, "loss_cpu": ref.loss.item(), "loss_device": out.loss.item(),
            "loss_abs_diff": abs(ref.loss.item() - out.loss.item()), "mask_logits_max_abs_diff": mask_diff,
            "bf16_train_loss": loss.item(), "bf16_grads_finite": finite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import small_config

    from pixellm.build import build_processor
    from pixellm.model.configuration_pixellm import PixelLMConfig

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 1
        torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
        torch.backends.cudnn.allow_tf32 = False
    tiny = PixelLMConfig.from_preset("tiny")
    build_processor(tiny)  # token ids and vocabulary from the tiny tokenizer (pixellm.build)
    configs = [
        ("small", small_config()),
        ("small-variants", small_config(token_fusion="linear", mask_readout="mean", pixel_detail_channels=8)),
        ("tiny", tiny),
    ]
    rows = [check(name, cfg, args.device) for name, cfg in configs]
    for r in rows:
        print(f"{r['config']}: loss |cpu-device| {r['loss_abs_diff']:.2e}, mask logits max|d| "
              f"{r['mask_logits_max_abs_diff']:.2e}, bf16 step finite grads {r['bf16_grads_finite']}")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    result = {"device": name, "torch": torch.__version__, "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ok = all(r["loss_abs_diff"] < 1e-4 and r["mask_logits_max_abs_diff"] < 1e-3 and r["bf16_grads_finite"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
