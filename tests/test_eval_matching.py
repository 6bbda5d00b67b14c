"""Exact BCE + Dice matching: closed forms against per-pixel loops, Hungarian against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pixellm.eval.matching import (
    EPS,
    binary_stats,
    costs_from_stats,
    hungarian,
    intersections,
    match_binary,
    match_soft,
    soft_stats,
)


def loop_cost(t: np.ndarray, p: np.ndarray) -> float:
    """Reference: mean BCE + (+1 smoothed) Dice, one pixel at a time."""
    t, p = t.ravel().astype(float), np.clip(p.ravel().astype(float), EPS, 1 - EPS)
    bce = 0.0
    for ti, pi in zip(t, p):
        bce -= ti * math.log(pi) + (1 - ti) * math.log(1 - pi)
    bce /= t.size
    dice = 1 - (2 * float((t * p).sum()) + 1) / (float(p.sum()) + float(t.sum()) + 1)
    return bce + dice


def binary_probs(mask: np.ndarray, score: float = 1 - EPS) -> np.ndarray:
    return np.where(mask, np.clip(score, EPS, 1 - EPS), EPS)


def random_masks(rng: np.random.Generator, n: int, shape=(6, 7)) -> np.ndarray:
    dens = rng.uniform(0.05, 0.7, size=(n, 1, 1))
    return rng.random((n, *shape)) < dens


def test_binary_costs_equal_pixel_loop():
    rng = np.random.default_rng(0)
    gt, pred = random_masks(rng, 3), random_masks(rng, 4)
    scores = rng.uniform(0.2, 1.0, size=4)
    for sc in (None, scores):
        inter = intersections(gt, pred)
        stats = binary_stats(inter, gt.reshape(3, -1).sum(1), pred.reshape(4, -1).sum(1), 42, sc)
        cost = costs_from_stats(stats)
        for i, j in itertools.product(range(3), range(4)):
            ref = loop_cost(gt[i], binary_probs(pred[j], 1 - EPS if sc is None else sc[j]))
            assert cost[i, j] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_soft_costs_equal_pixel_loop_and_binary_closed_form():
    rng = np.random.default_rng(1)
    gt = random_masks(rng, 2)
    probs = rng.random((3, 6, 7))
    cost = costs_from_stats(soft_stats(gt, probs))
    for i, j in itertools.product(range(2), range(3)):
        assert cost[i, j] == pytest.approx(loop_cost(gt[i], probs[j]), rel=1e-9)
    # Binary masks given as explicit probability maps: the soft path equals the closed form.
    pred = random_masks(rng, 3)
    soft = costs_from_stats(soft_stats(gt, binary_probs(pred).astype(np.float64)))
    closed = costs_from_stats(
        binary_stats(intersections(gt, pred), gt.reshape(2, -1).sum(1), pred.reshape(3, -1).sum(1), 42)
    )
    np.testing.assert_allclose(soft, closed, rtol=1e-9)


def test_intersections_are_exact_integers():
    rng = np.random.default_rng(2)
    gt, pred = random_masks(rng, 3, (40, 50)), random_masks(rng, 2, (40, 50))
    inter = intersections(gt, pred)
    assert inter.dtype == np.int64
    for i, j in itertools.product(range(3), range(2)):
        assert inter[i, j] == int(np.logical_and(gt[i], pred[j]).sum())


@pytest.mark.parametrize("g,k", [(3, 3), (1, 4), (4, 1), (0, 2), (2, 0)])
def test_hungarian_matches_brute_force_on_padded_costs(g, k):
    rng = np.random.default_rng(10 * g + k)
    gt, pred = random_masks(rng, g), random_masks(rng, k)
    perm, inter, gt_area, pred_area, cost = match_binary(gt, pred)
    assert inter.shape == (g, k) and gt_area.tolist() == [int(m.sum()) for m in gt]
    assert pred_area.tolist() == [int(m.sum()) for m in pred]
    p = max(g, k)
    assert cost.shape == (p, p) and sorted(perm.tolist()) == list(range(p))
    # Padded entries are the costs of real empty masks.
    empty = np.zeros((6, 7), dtype=bool)
    for i, j in itertools.product(range(p), range(p)):
        t = gt[i] if i < g else empty
        q = binary_probs(pred[j]) if j < k else binary_probs(empty)
        assert cost[i, j] == pytest.approx(loop_cost(t, q), rel=1e-9)
    best = min(sum(cost[i, s[i]] for i in range(p)) for s in itertools.permutations(range(p)))
    assert sum(cost[i, perm[i]] for i in range(p)) == pytest.approx(best, rel=1e-12)


def test_matching_is_deterministic_and_soft_agrees_with_binary():
    rng = np.random.default_rng(3)
    gt, pred = random_masks(rng, 4, (20, 20)), random_masks(rng, 4, (20, 20))
    runs = [match_binary(gt, pred)[0].tolist() for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    perm_soft, _ = match_soft(gt, binary_probs(pred))
    assert perm_soft.tolist() == runs[0]


def test_obvious_assignment_is_found():
    # Predictions are the GT masks in reverse order: the matching must undo the reversal.
    gt = np.zeros((3, 8, 8), dtype=bool)
    gt[0, :2], gt[1, 3:5], gt[2, 6:] = True, True, True
    perm = hungarian(costs_from_stats(soft_stats(gt, binary_probs(gt[::-1]))))
    assert perm.tolist() == [2, 1, 0]


def test_hungarian_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        hungarian(np.zeros((2, 3)))
