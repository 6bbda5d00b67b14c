"""Mask losses of PixelLM (docs/architecture.md, "Losses"): target refinement BCE and dice.

Masks are compared at the original image resolution. `group_sizes` says how many consecutive masks
belong to one answer; the refinement weight only looks at overlaps inside one answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pixellm.errors import InputError


def _check_masks(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise InputError(f"mask logits must be [K, H, W], got {list(logits.shape)}")
    if targets.shape != logits.shape:
        raise InputError(f"mask targets {list(targets.shape)} do not match logits {list(logits.shape)}")


def dice_per_mask(
    logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6
) -> torch.Tensor:
    """Dice loss of every mask: logits, targets [K, H, W] -> [K].

    1 - (2 * sum(p * t) / scale + eps) / ((sum(p) + sum(t)) / scale + eps), p = sigmoid(logits);
    the 1/scale (the authors' 1/1000) keeps large masks away from the eps regime in low precision.
    """
    _check_masks(logits, targets)
    p = torch.sigmoid(logits.float()).flatten(1)
    t = targets.float().flatten(1)
    numerator = 2 * (p / scale * t).sum(-1)
    denominator = (p / scale).sum(-1) + (t / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def _group_index(group_sizes: Sequence[int], num_masks: int, device: torch.device) -> torch.Tensor:
    """[K] index of the answer each mask belongs to; validates `group_sizes`."""
    sizes = [int(s) for s in group_sizes]
    if any(s < 0 for s in sizes):
        raise InputError(f"group_sizes must be non-negative, got {sizes}")
    if sum(sizes) != num_masks:
        raise InputError(f"group_sizes {sizes} sum to {sum(sizes)}, but there are {num_masks} masks")
    counts = torch.tensor(sizes, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)


def refinement_weights(logits: torch.Tensor, group_sizes: Sequence[int], alpha: float = 2.0) -> torch.Tensor:
    """Per-pixel weights [K, H, W]: alpha where >= 2 masks of the same answer have logit > 0, else 1."""
    group = _group_index(group_sizes, logits.shape[0], logits.device)
    positive = (logits.detach() > 0).float()
    claims = torch.zeros((len(group_sizes), *logits.shape[1:]), device=logits.device)
    claims.index_add_(0, group, positive)  # G x H x W: positive masks per answer and pixel
    overlap = claims[group] >= 2
    return torch.where(overlap, alpha, 1.0)


def refinement_bce_per_mask(
    logits: torch.Tensor, targets: torch.Tensor, group_sizes: Sequence[int], alpha: float = 2.0
) -> torch.Tensor:
    """Target refinement loss of every mask: weighted BCE averaged over pixels, [K, H, W] -> [K].

    Pixels claimed (logit > 0) by two or more masks of the same answer weigh `alpha`, others 1; the
    weights carry no gradient. alpha = 1 gives plain BCE.
    """
    _check_masks(logits, targets)
    weight = refinement_weights(logits, group_sizes, alpha)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), weight=weight, reduction="none")
    return bce.flatten(1).mean(-1)


def mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    group_sizes: Sequence[int],
    alpha: float = 2.0,
    lambda_ref: float = 2.0,
    lambda_dice: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Mask losses averaged over the K masks.

    Args:
        logits: [K, H, W] predicted mask logits.
        targets: [K, H, W] ground-truth masks (bool or 0/1 float).
        group_sizes: masks per answer, in order, summing to K.

    Returns:
        {"ref", "dice", "total"} scalars, total = lambda_ref * ref + lambda_dice * dice. With K = 0
        all three are zeros that stay connected to `logits` (backprop gives zero gradients).
    """
    ref = refinement_bce_per_mask(logits, targets, group_sizes, alpha)
    dice = dice_per_mask(logits, targets)
    if logits.shape[0] == 0:
        zero = logits.float().sum() * 0  # keeps the graph so a batch without masks still backprops
        ref, dice = zero, zero
    else:
        ref, dice = ref.mean(), dice.mean()
    return {"ref": ref, "dice": dice, "total": lambda_ref * ref + lambda_dice * dice}
