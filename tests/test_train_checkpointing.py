"""Gradient checkpointing (``gradient_checkpointing: true``): the same gradients, layers really
recomputed."""

from __future__ import annotations

import torch
from test_train_resume import small_overrides

from pixellm.train.config import config_from_dict
from pixellm.train.data import build_training_data, collate_train
from pixellm.train.setup import build_model


def _grads(data_dir, checkpointing: bool, trainable: str) -> tuple[dict[str, torch.Tensor], float, int]:
    cfg = config_from_dict({
        "preset": "tiny", "model_overrides": small_overrides(), "trainable": trainable,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.3},  # dropout: the recompute must replay RNG
        "data": [{"name": "synth", "kind": "synth", "path": str(data_dir / "train.json")}],
        "max_length": 160, "seed": 2, "gradient_checkpointing": checkpointing, "precision": "fp32",
    })
    model, processor = build_model(cfg)
    dataset, _ = build_training_data(cfg.data, processor, cfg.seed)
    batch = collate_train([dataset[i] for i in range(3)], processor.pad_token_id)
    batch.pop("skips")
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    # A module inside the layer: the checkpoint wraps the layer's forward, not its hooks; a pre-hook,
    # because the recompute stops early once every saved tensor is back.
    model.language_model.get_decoder().layers[0].self_attn.register_forward_pre_hook(count)
    torch.manual_seed(7)
    out = model(**batch, return_logits=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return grads, float(out.loss.detach()), calls


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    from pixellm.data.synth import write_synth

    write_synth(tmp_path, {"train": 6}, seed=4)
    for trainable in ("pixellm", "all_but_vision"):
        plain, loss_plain, calls_plain = _grads(tmp_path, False, trainable)
        ckpt, loss_ckpt, calls_ckpt = _grads(tmp_path, True, trainable)
        # The checkpointed layer ran twice (forward + recompute in backward): checkpointing is on.
        assert (calls_plain, calls_ckpt) == (1, 2)
        assert loss_plain == loss_ckpt
        assert plain.keys() == ckpt.keys()
        assert any("lora_" in n for n in plain) and any("mask_decoder" in n for n in plain)
        for name, g in plain.items():
            # Same ops on the same inputs: equal up to fp32 rounding (observed: bit-identical).
            torch.testing.assert_close(ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
