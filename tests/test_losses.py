"""Mask losses: the check value of docs/architecture.md "Losses", dice, target refinement weights and groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixellm.errors import InputError
from pixellm.losses import dice_per_mask, mask_losses, refinement_bce_per_mask


def bce(x: float, t: float) -> float:
    """BCE with logits of one pixel, by hand."""
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_spec_check_value():
    out = mask_losses(torch.zeros(1, 6, 9), torch.ones(1, 6, 9), [1])
    assert out["ref"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert out["dice"].item() == pytest.approx(1 / 3, abs=1e-4)
    assert out["total"].item() == pytest.approx(1.553, abs=1e-3)


def test_dice_hand_computed():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]], [[1.0, -2.0], [0.5, 0.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    got = dice_per_mask(logits, targets)
    for k in range(2):
        p = [1 / (1 + math.exp(-v)) for v in logits[k].flatten().tolist()]
        t = targets[k].flatten().tolist()
        inter = sum(a * b for a, b in zip(p, t))
        expected = 1 - (2 * inter / 1000 + 1e-6) / ((sum(p) + sum(t)) / 1000 + 1e-6)
        assert got[k].item() == pytest.approx(expected, rel=1e-5)


def test_alpha_one_is_plain_bce():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 6)
    targets = (torch.rand(4, 5, 6) > 0.5).float()
    got = refinement_bce_per_mask(logits, targets, [3, 1], alpha=1.0)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
    torch.testing.assert_close(got, expected)


def overlapping_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1 x 4 masks; pixels 1 and 2 are claimed by both (logit > 0)."""
    logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0]], [[-2.0, 1.5, 3.0, 0.7]]])
    targets = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]])
    return logits, targets


def test_refinement_weight_hits_exactly_the_overlap():
    logits, targets = overlapping_pair()
    got = refinement_bce_per_mask(logits, targets, [2], alpha=2.0)
    for k in range(2):
        values = [bce(x, t) for x, t in zip(logits[k, 0].tolist(), targets[k, 0].tolist())]
        weights = [1.0, 2.0, 2.0, 1.0]
        expected = sum(w * v for w, v in zip(weights, values)) / 4
        assert got[k].item() == pytest.approx(expected, rel=1e-5)
        # The difference to plain BCE is exactly the overlap pixels' BCE, counted once more.
        plain = refinement_bce_per_mask(logits, targets, [2], alpha=1.0)[k].item()
        assert got[k].item() - plain == pytest.approx((values[1] + values[2]) / 4, rel=1e-5)


def test_groups_are_independent():
    logits, targets = overlapping_pair()
    separate = refinement_bce_per_mask(logits, targets, [1, 1], alpha=2.0)
    plain = refinement_bce_per_mask(logits, targets, [1, 1], alpha=1.0)
    torch.testing.assert_close(separate, plain)
    together = refinement_bce_per_mask(logits, targets, [2], alpha=2.0)
    assert (together - separate).abs().min() > 1e-3


def test_refinement_weights_carry_no_gradient():
    logits, targets = overlapping_pair()
    logits.requires_grad_(True)
    refinement_bce_per_mask(logits, targets, [2], alpha=3.0).sum().backward()
    weights = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = weights * (torch.sigmoid(logits.detach()) - targets) / 4
    torch.testing.assert_close(logits.grad, expected)


def test_mask_losses_means_and_weights():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 4)
    targets = torch.rand(3, 4, 4) > 0.5
    out = mask_losses(logits, targets, [2, 1], alpha=2.0, lambda_ref=3.0, lambda_dice=0.25)
    ref = refinement_bce_per_mask(logits, targets, [2, 1]).mean()
    dice = dice_per_mask(logits, targets).mean()
    torch.testing.assert_close(out["ref"], ref)
    torch.testing.assert_close(out["dice"], dice)
    torch.testing.assert_close(out["total"], 3.0 * ref + 0.25 * dice)


def test_no_masks_gives_zero_that_backprops():
    logits = torch.zeros(0, 4, 4, requires_grad=True)
    out = mask_losses(logits, torch.zeros(0, 4, 4), [0, 0])
    assert all(v.item() == 0 for v in out.values())
    out["total"].backward()
    assert logits.grad is not None


def test_bad_inputs_raise():
    logits, targets = overlapping_pair()
    with pytest.raises(InputError, match="group_sizes"):
        mask_losses(logits, targets, [1])
    with pytest.raises(InputError, match="do not match"):
        mask_losses(logits, targets[:1], [2])
    with pytest.raises(InputError, match=r"\[K, H, W\]"):
        dice_per_mask(logits[0], targets[0])
