"""WarmupDecayLR (the authors' DeepSpeed scheduler): linear warm-up, then linear decay to 0."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_decay_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): ``(step+1)/warmup`` during warm-up,
    then linear from 1 down to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - step
    span = max(1, total_steps - warmup_steps)
    return max(0.0, remaining / span)


def warmup_decay_lr(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_decay_factor` (its state is saved in checkpoints)."""
    return LambdaLR(optimizer, lambda s: warmup_decay_factor(s, warmup_steps, total_steps))
