"""Exact BCE + Dice matching costs and the Hungarian assignment of the MUSE protocol.

The authors estimate the costs on 12,544 randomly sampled points (no seed). We compute them
exactly over all pixels, from a handful of pairwise sums, so no pixel loops and no randomness:

    A_ij  = sum_x t_i(x) p_j(x)                (soft intersection)
    B_ij  = sum_x t_i(x) logit(p_j(x))          (logit = log p - log(1 - p))
    C_j   = sum_x log(1 - p_j(x))
    S_j   = sum_x p_j(x),   a_i = sum_x t_i(x),   N = number of pixels

    BCE_ij  = -(B_ij + C_j) / N                  (mean over pixels)
    Dice_ij = 1 - (2 A_ij + 1) / (S_j + a_i + 1)  (+1 smoothing, as in Mask2Former's matcher)

Binary predictions (what ``PRED.jsonl`` holds) have no logits. We give every pixel of
prediction j the probability ``q_j`` on its mask and ``EPS`` off it, where ``q_j`` is the
prediction's ``mask_scores`` entry (clamped to ``[EPS, 1 - EPS]``) or ``1 - EPS`` without one.
Then all sums follow from the integer intersections ``I_ij`` and areas, which one matrix product
gives. Padding masks are empty: a padded prediction is ``EPS`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

EPS = 1e-6
"""Probability floor/ceiling for binary predictions: BCE of a wrong pixel is -ln(1e-6) = 13.8."""

_FLOAT32_EXACT = 2**24  # float32 sums of 0/1 values stay exact below this many pixels


@dataclass
class PairStats:
    """Sufficient statistics of all (GT i, prediction j) pairs; shapes ``[G, K]`` or ``[K]``."""

    soft_inter: np.ndarray  # A [G, K]
    gt_logit: np.ndarray  # B [G, K]
    log_neg: np.ndarray  # C [K]
    pred_sum: np.ndarray  # S [K]
    gt_area: np.ndarray  # a [G]
    n_pixels: int


def flatten_masks(masks: np.ndarray) -> np.ndarray:
    """``[M, H, W]`` bool -> ``[M, H*W]`` float32 (float64 for images with >= 2**24 pixels)."""
    m = masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:])))
    dtype = np.float32 if m.shape[1] < _FLOAT32_EXACT else np.float64
    return m.astype(dtype, copy=False)


def mask_areas(masks: np.ndarray) -> np.ndarray:
    """Pixel count of each mask of a stack ``[M, H, W]`` -> int64 ``[M]`` (works for M = 0)."""
    return masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))).sum(axis=1).astype(np.int64)


def intersections(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise pixel intersections of two bool mask stacks ``[G, H, W]`` x ``[K, H, W]`` -> int64 ``[G, K]``."""
    return pair_counts(gt, pred)[0]


def pair_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``(intersections [G, K], GT areas [G], prediction areas [K])`` from one Gram matrix.

    One BLAS product of the stacked masks with themselves gives every intersection and, on the
    diagonal, every area (far faster than per-pair logical ands).
    """
    g, k = gt.shape[0], pred.shape[0]
    if g + k == 0:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    both = flatten_masks(np.concatenate([gt, pred]) if g and k else (gt if g else pred))
    gram = np.rint(both @ both.T).astype(np.int64)
    areas = np.diag(gram)
    return gram[:g, g:], areas[:g].copy(), areas[g:].copy()


def binary_stats(
    inter: np.ndarray,
    gt_area: np.ndarray,
    pred_area: np.ndarray,
    n_pixels: int,
    scores: np.ndarray | None = None,
    eps: float = EPS,
) -> PairStats:
    """Statistics for binary predictions from intersections ``[G, K]`` and areas ``[G]``, ``[K]``.

    ``scores`` (``[K]``, optional) is the probability given to each prediction's mask pixels.
    """
    inter = inter.astype(np.float64)
    gt_area = gt_area.astype(np.float64)
    pred_area = pred_area.astype(np.float64)
    q_in = np.full(pred_area.shape, 1.0 - eps) if scores is None else np.clip(scores, eps, 1.0 - eps)
    q_out = eps
    logit_in = np.log(q_in) - np.log1p(-q_in)
    logit_out = np.log(q_out) - np.log1p(-q_out)
    outside = gt_area[:, None] - inter  # GT pixels outside prediction j
    return PairStats(
        soft_inter=q_in[None, :] * inter + q_out * outside,
        gt_logit=logit_in[None, :] * inter + logit_out * outside,
        log_neg=pred_area * np.log1p(-q_in) + (n_pixels - pred_area) * np.log1p(-q_out),
        pred_sum=q_in * pred_area + q_out * (n_pixels - pred_area),
        gt_area=gt_area,
        n_pixels=int(n_pixels),
    )


def soft_stats(gt: np.ndarray, probs: np.ndarray, eps: float = EPS) -> PairStats:
    """Statistics for per-pixel probabilities ``probs`` ``[K, H, W]`` against bool GT ``[G, H, W]``."""
    t = gt.reshape(gt.shape[0], int(np.prod(gt.shape[1:]))).astype(np.float64)
    p = np.clip(
        probs.reshape(probs.shape[0], int(np.prod(probs.shape[1:]))).astype(np.float64), eps, 1.0 - eps
    )
    logit = np.log(p) - np.log1p(-p)
    return PairStats(
        soft_inter=t @ p.T,
        gt_logit=t @ logit.T,
        log_neg=np.log1p(-p).sum(axis=1),
        pred_sum=p.sum(axis=1),
        gt_area=t.sum(axis=1),
        n_pixels=int(t.shape[1] if t.shape[0] else p.shape[1]),
    )


def costs_from_stats(stats: PairStats) -> np.ndarray:
    """BCE + Dice cost matrix ``[G, K]`` (rows GT, columns predictions)."""
    bce = -(stats.gt_logit + stats.log_neg[None, :]) / max(stats.n_pixels, 1)
    dice = 1.0 - (2.0 * stats.soft_inter + 1.0) / (stats.pred_sum[None, :] + stats.gt_area[:, None] + 1.0)
    return bce + dice


def hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of a square ``[P, P]`` cost matrix: ``perm[i]`` = column of row ``i``.

    ``scipy.optimize.linear_sum_assignment`` is exact and deterministic for a given matrix.
    """
    if cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost matrix must be square, got {cost.shape}")
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(cost.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def pad_square(
    cost_gk: np.ndarray, pad_gt_row: np.ndarray, pad_pred_col: np.ndarray, pad_pad: float
) -> np.ndarray:
    """Pad a ``[G, K]`` cost matrix to ``[P, P]``, ``P = max(G, K)``, with the costs of empty masks.

    ``pad_gt_row`` ``[K]``: cost of an empty GT against each prediction; ``pad_pred_col`` ``[G]``:
    cost of each GT against an empty prediction; ``pad_pad``: empty against empty.
    """
    g, k = cost_gk.shape
    p = max(g, k)
    out = np.full((p, p), float(pad_pad))
    out[:g, :k] = cost_gk
    out[g:, :k] = pad_gt_row[None, :]
    out[:g, k:] = pad_pred_col[:, None]
    return out


def match_binary(
    gt: np.ndarray, pred: np.ndarray, scores: np.ndarray | None = None, eps: float = EPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Match bool GT masks ``[G, H, W]`` with bool predictions ``[K, H, W]``.

    Returns ``(perm, inter, gt_area, pred_area, cost)``: ``perm`` ``[P]`` maps GT slot i (i >= G: padding) to the
    prediction slot ``perm[i]`` (>= K: padding); ``inter`` ``[G, K]`` integer intersections;
    ``gt_area`` ``[G]``, ``pred_area`` ``[K]``; ``cost`` ``[P, P]`` the padded BCE + Dice matrix.
    """
    g, k = gt.shape[0], pred.shape[0]
    n = int(np.prod(gt.shape[1:] if g else pred.shape[1:])) if (g or k) else 0
    inter, gt_area, pred_area = pair_counts(gt, pred)
    perm, cost = match_counts(inter, gt_area, pred_area, n, scores, eps)
    return perm, inter, gt_area, pred_area, cost


def match_counts(
    inter: np.ndarray,
    gt_area: np.ndarray,
    pred_area: np.ndarray,
    n_pixels: int,
    scores: np.ndarray | None = None,
    eps: float = EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(perm, cost)`` of :func:`match_binary` from the integer statistics alone (intersections
    ``[G, K]``, areas ``[G]``, ``[K]``, pixel count), e.g. computed from run lengths."""
    cost = _padded_costs(inter, gt_area, pred_area, n_pixels, scores, eps)
    return hungarian(cost), cost


def match_soft(gt: np.ndarray, probs: np.ndarray, eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """Match bool GT ``[G, H, W]`` with per-pixel probabilities ``[K, H, W]``: ``(perm, cost)``."""
    g, k = gt.shape[0], probs.shape[0]
    n = int(np.prod(gt.shape[1:] if g else probs.shape[1:])) if (g or k) else 0
    cost_gk = costs_from_stats(soft_stats(gt, probs, eps))
    empty_gt = np.zeros((1,) + probs.shape[1:], dtype=bool)
    empty_pred = np.zeros((1,) + gt.shape[1:], dtype=np.float64)
    pad_row = costs_from_stats(soft_stats(empty_gt, probs, eps))[0] if k else np.zeros(0)
    pad_col = costs_from_stats(soft_stats(gt, empty_pred, eps))[:, 0] if g else np.zeros(0)
    pad_pad = costs_from_stats(binary_stats(np.zeros((1, 1)), np.zeros(1), np.zeros(1), n, eps=eps))[0, 0]
    cost = pad_square(cost_gk, pad_row, pad_col, pad_pad)
    return hungarian(cost), cost


def _padded_costs(
    inter: np.ndarray,
    gt_area: np.ndarray,
    pred_area: np.ndarray,
    n: int,
    scores: np.ndarray | None,
    eps: float,
) -> np.ndarray:
    g, k = inter.shape
    # Append one empty GT row and one empty prediction column, then pad with their costs.
    inter_x = np.zeros((g + 1, k + 1), dtype=np.float64)
    inter_x[:g, :k] = inter
    gt_x = np.append(gt_area.astype(np.float64), 0.0)
    pred_x = np.append(pred_area.astype(np.float64), 0.0)
    scores_x = None if scores is None else np.append(np.asarray(scores, dtype=np.float64), 1.0)
    full = costs_from_stats(binary_stats(inter_x, gt_x, pred_x, n, scores_x, eps))
    return pad_square(full[:g, :k], full[g, :k], full[:g, k], full[g, k])
