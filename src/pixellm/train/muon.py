"""Muon for a model's hidden weight matrices and AdamW for every other parameter, in one optimizer.

Muon (K. Jordan et al., 2024, "Muon: an optimizer for hidden layers in neural networks") replaces a
2-D weight's update by the semi-orthogonal matrix nearest to its Nesterov momentum, computed with
five Newton-Schulz iterations; embeddings, the output head, norms, biases and convolutions stay on
AdamW. Its step size follows Moonshot's "match the RMS of AdamW" rule (0.2 * sqrt(max(rows,
cols)) times the learning rate, also ``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")``), so one
learning rate, schedule and ``lr_scale`` serve both halves.

Why not ``torch.optim.Muon`` beside an ``AdamW``: the trainer, its scheduler, accelerate and the
checkpoints hold one optimizer, and torch's Muon runs the iteration in bf16, which a CPU without
native bf16 emulates (the demo's step took 3.5x as long on an AVX2 CPU; docs/demo-rounds.md,
eighth round). Here the iteration runs in fp32 on the parameter's device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# Newton-Schulz quintic coefficients of Muon's reference implementation (also torch.optim.Muon's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(update: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """The semi-orthogonal matrix nearest to ``update`` (approximately: singular values land in
    about [0.7, 1.2]), by Newton-Schulz iterations in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = update.float()
    single = x.dim() == 2
    if single:  # baddbmm takes a batch of matrices
        x = x[None]
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        # b * gram + c * gram @ gram, then a * x + that @ x, each as one GEMM that scales and adds
        # (beta, alpha): no separate element-wise passes over the stack (the demo's optimizer step
        # on one AVX2 thread: docs/demo-rounds.md, eighteenth round)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x if wide else x.mT
    return (x[0] if single else x).to(update.dtype)


def muon_lr_ratio(shape: torch.Size) -> float:
    """Muon's step relative to AdamW's learning rate: 0.2 * sqrt(max(rows, cols))."""
    return 0.2 * math.sqrt(max(shape[0], shape[1]))


class MuonWithAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups marked ``muon=True`` (2-D tensors only) are updated by Muon.

    Groups, learning rates, weight decay (decoupled, as AdamW's) and ``state_dict`` work as in
    ``torch.optim.AdamW``; a Muon parameter's state is its ``momentum_buffer`` and ``step``.
    """

    def __init__(self, params: Iterable[dict], lr: float, betas: tuple[float, float], weight_decay: float,
                 momentum: float = 0.95, fused: bool | None = None) -> None:
        groups = [dict(g) for g in params]
        for g in groups:
            g.setdefault("muon", False)
            g.setdefault("momentum", momentum)
            if g["muon"]:
                bad = [tuple(p.shape) for p in g["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon updates 2-D weight matrices only, got a tensor of shape {bad[0]}")
        super().__init__(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            if not group["muon"]:
                continue
            mu, lr, decay = group["momentum"], float(group["lr"]), group["weight_decay"]
            # Matrices of one shape (up to a transpose) are orthogonalised as one batch: the same
            # numbers, fewer and larger matmuls (the demo's update: 29 against 38 ms, 2 threads, AVX2).
            buckets: dict[tuple, list[tuple[torch.Tensor, bool, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    # "step" too: AdamW's load_state_dict expects one in every parameter's state
                    state["step"] = torch.tensor(0.0)
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                nesterov = grad.lerp(buf, mu)
                wide = p.shape[0] <= p.shape[1]
                key = (tuple(sorted(p.shape)), nesterov.dtype, nesterov.device)
                buckets.setdefault(key, []).append((p, wide, nesterov if wide else nesterov.mT))
                held.append((p, grad))
                p.grad = None  # AdamW's step skips parameters without a gradient
            for members in buckets.values():
                updates = orthogonalize(torch.stack([u for _, _, u in members]))
                for (p, wide, _), update in zip(members, updates):
                    if decay:
                        p.mul_(1 - lr * decay)
                    p.add_(update if wide else update.mT, alpha=-lr * muon_lr_ratio(p.shape))
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        return loss
