"""The arithmetic of the authors' MUSE evaluation, for comparison with published numbers.

``pixellm eval muse --protocol authors``. Our protocol (``muse_protocol.py``) follows the paper;
the authors' released validation loop computes something else (docs/evaluation.md lists every
difference with its effect). This module reproduces that arithmetic, with exact costs where they
sample 12,544 unseeded random points:

1. Per question, BCE + Dice costs between its K predictions and G targets (sigmoid of the logits;
   binary predictions as in ``matching.py``) and a rectangular assignment (``min(K, G)`` pairs;
   no padding with empty masks).
2. Slots: each matched pair (prediction binarised at logit 0), each unmatched target against an
   empty prediction, each unmatched prediction against an empty target *as raw logits*. Their
   two-bin histogram over [0, 1] counts a raw logit as foreground only when it lies in
   [0.5, 1], so an unmatched prediction's area is that count (0 for binary predictions, which have
   no logits: the usual case, since logits rarely fall in that band).
3. Slot IoU = I / (U + 1e-5), plus 1 when U = 0 (so an empty pair, or an unmatched prediction
   with no logit in the band, scores 1).
4. gIoU: the slot IoUs of all questions of one image are summed and divided by
   ``max(total predictions, total targets)`` of that image (so one image can score above 1); the
   image averages are weighted by that divisor, i.e. gIoU = sum of slot IoUs / sum of divisors.
   cIoU = sum I / (sum U + 1e-10).

The text plays no part (no judge, no 0.5 gate); answers are only rewritten for the details as
"(name [x0,y0,x1,y1])".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

from pixellm.data.muse import MuseQuestion, iter_questions
from pixellm.eval.matching import EPS, binary_stats, costs_from_stats, pair_counts, soft_stats
from pixellm.eval.predictions import GENERATED, TEACHER_FORCED, Prediction, empty_prediction, load_predictions
from pixellm.eval.sources import GtSource, PredSource, load_ground_truth

IOU_EPS = 1e-5  # added to each slot's union
CIOU_EPS = 1e-10  # added to the summed union
BAND = (0.5, 1.0)  # raw logits counted as foreground by a 2-bin histogram over [0, 1]


@dataclass
class AuthorsQuestion:
    """One question under the authors' arithmetic: its slots' (I, U, IoU) and its K and G."""

    key: tuple[int, int]
    num_pred: int
    num_gt: int
    slots: list[tuple[int, int, float]]  # (intersection, union, slot IoU)
    missing: bool = False
    rewritten: str = ""


def slot_iou(inter: int, union: int) -> float:
    """I / (U + 1e-5), plus 1 when the union is empty."""
    return inter / (union + IOU_EPS) + (1.0 if union == 0 else 0.0)


def evaluate_question_authors(question: MuseQuestion, pred: Prediction, missing: bool = False) -> AuthorsQuestion:
    """Steps 1-3 for one question (decoded masks; exact costs)."""
    gt = question.target_masks()
    masks = pred.decode_masks(question.height, question.width)
    g, k = gt.shape[0], masks.shape[0]
    inter, gt_area, pred_area = pair_counts(gt, masks)
    logits = None if pred.mask_logits is None else np.asarray(pred.mask_logits, dtype=np.float64)
    if g and k:
        if logits is not None:
            stats = soft_stats(gt, expit(logits), EPS)
        else:
            stats = binary_stats(inter, gt_area, pred_area, gt[0].size, pred.mask_scores, EPS)
        cost_kg = costs_from_stats(stats).T  # predictions x targets, as they build it
        pred_idx, gt_idx = linear_sum_assignment(cost_kg)
    else:
        pred_idx = gt_idx = np.zeros(0, dtype=np.int64)
    slots = []
    for kk, gg in zip(pred_idx.tolist(), gt_idx.tolist()):
        i = int(inter[gg, kk])
        u = int(gt_area[gg] + pred_area[kk] - i)
        slots.append((i, u, slot_iou(i, u)))
    for gg in sorted(set(range(g)) - set(gt_idx.tolist())):  # target vs an empty prediction
        u = int(gt_area[gg])
        slots.append((0, u, slot_iou(0, u)))
    for kk in sorted(set(range(k)) - set(pred_idx.tolist())):  # raw logits vs an empty target
        u = 0 if logits is None else int(((logits[kk] >= BAND[0]) & (logits[kk] <= BAND[1])).sum())
        slots.append((0, u, slot_iou(0, u)))
    return AuthorsQuestion(question.key, k, g, slots, missing, _rewrite(question, pred.answer, pred_idx, gt_idx))


def _rewrite(question: MuseQuestion, answer: str, pred_idx: np.ndarray, gt_idx: np.ndarray) -> str:
    """Each "[SEG]" -> "(name [x0,y0,x1,y1])" of its matched target, "(None [])" otherwise."""
    by_pred = dict(zip(pred_idx.tolist(), gt_idx.tolist()))
    parts = answer.split("[SEG]")
    out = [parts[0]]
    for k, rest in enumerate(parts[1:]):
        g = by_pred.get(k)
        if g is None:
            out.append("(None [])")
        else:
            ann = question.targets[g]
            box = ann.get("bbox") or [0, 0, 0, 0]
            x, y, w, h = (int(round(float(v))) for v in box)
            out.append(f"({ann.get('category_name') or 'object'} [{x},{y},{x + w},{y + h}])")
        out.append(rest)
    return "".join(out)


def summarize_authors(questions: Sequence[AuthorsQuestion]) -> dict[str, Any]:
    """Step 4: gIoU over images (divisor max(total K, total G) per image), cIoU over slots."""
    by_image: dict[int, list[AuthorsQuestion]] = defaultdict(list)
    for q in questions:
        by_image[q.key[0]].append(q)
    total, weight = 0.0, 0
    per_image = {}
    for image, qs in sorted(by_image.items()):
        divisor = max(sum(q.num_pred for q in qs), sum(q.num_gt for q in qs))
        score = sum(s[2] for q in qs for s in q.slots)
        if divisor:  # their loop would divide by zero on an image with no targets and no masks
            per_image[image] = score / divisor
            total += score
            weight += divisor
    inter = sum(s[0] for q in questions for s in q.slots)
    union = sum(s[1] for q in questions for s in q.slots)
    return {
        "gIoU": total / weight if weight else 0.0,
        "cIoU": inter / (union + CIOU_EPS),
        "samples": len(questions),
        "images": len(per_image),
        "missing": sum(q.missing for q in questions),
        "images_above_1": sum(v > 1.0 for v in per_image.values()),
    }


def evaluate_muse_authors(
    parts: Sequence[tuple[GtSource, PredSource, str | None]], details: bool = False
) -> dict[str, Any]:
    """Metrics JSON of the authors' arithmetic over (GT, predictions, split) parts.

    Same top level as ``evaluate_muse_splits`` (``gIoU``, ``cIoU``, ``samples``, ``missing``,
    ``judge`` = None, ``mode``, one table per prediction mode, ``settings``); images of different
    parts are kept apart.
    """
    by_mode: dict[str, list[AuthorsQuestion]] = defaultdict(list)
    for n, (gt, predictions, split) in enumerate(parts):
        records, source, _ = load_ground_truth(gt, split)
        preds = load_predictions(predictions, records)
        modes = sorted({mode for _, _, mode in preds}) or [GENERATED]
        for mode in modes:
            for q in iter_questions(records, source=source):
                pred = preds.get((*q.key, mode))
                result = evaluate_question_authors(
                    q, pred or empty_prediction(*q.key, teacher_forced=mode == TEACHER_FORCED), pred is None
                )
                result.key = (n * 10**9 + q.key[0], q.key[1])  # one image per (part, record)
                by_mode[mode].append(result)
    main = GENERATED if GENERATED in by_mode else (TEACHER_FORCED if by_mode else GENERATED)
    out: dict[str, Any] = {**summarize_authors(by_mode.get(main, [])), "judge": None, "mode": main}
    for mode, qs in by_mode.items():
        out[mode] = summarize_authors(qs)
        if details:
            out[mode]["per_sample"] = [
                {"image": q.key[0] % 10**9, "question": q.key[1], "pred": q.num_pred, "gt": q.num_gt,
                 "slots": [list(s) for s in q.slots], "missing": q.missing, "rewritten": q.rewritten}
                for q in qs
            ]
    out["settings"] = {"protocol": "authors", "iou_eps": IOU_EPS, "ciou_eps": CIOU_EPS,
                       "raw_logit_band": list(BAND), "bce_eps": EPS, "costs": "exact"}
    return out
