"""Ordered referring-segmentation metrics (LISA-compatible) with gRefCOCO-style no-target accuracy.

The i-th predicted mask is compared with the i-th target (multi-referring answers keep the order
of the names in the question, docs/data.md). Per mask slot i < max(G, K), a missing mask on
either side is empty:

    IoU_i = I_i / U_i, and 1 when U_i = 0 (LISA adds 1 for an empty-vs-empty pair)
    gIoU  = mean of IoU_i over all mask slots of the split (LISA averages over masks)
    cIoU  = sum I_i / sum U_i

A no-target sample (G = 0) is one slot: IoU 1 if it is predicted empty (no mask or only empty
masks), else 0, with the predicted area as union. N-acc = no-target samples predicted empty /
no-target samples; T-acc = target samples predicted non-empty / target samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixellm.data.muse import MuseQuestion, iter_questions
from pixellm.eval.matching import mask_areas
from pixellm.eval.predictions import GENERATED, TEACHER_FORCED, Prediction, empty_prediction, load_predictions
from pixellm.eval.sources import GtSource, PredSource, by_mode, load_ground_truth


@dataclass
class ReferSample:
    """Ordered comparison of one question: per-slot intersections and unions ``[max(G, K)]``."""

    key: tuple[int, int]
    split: str
    mode: str
    num_gt: int
    num_pred: int
    inter: np.ndarray
    union: np.ndarray
    predicted_empty: bool
    missing: bool = False

    @property
    def no_target(self) -> bool:
        return self.num_gt == 0

    @property
    def ious(self) -> np.ndarray:
        """Per-slot IoU; empty-vs-empty slots (and a correct empty no-target answer) are 1."""
        if self.no_target:
            return np.array([1.0 if self.predicted_empty else 0.0])
        safe = np.maximum(self.union, 1)
        return np.where(self.union == 0, 1.0, self.inter / safe)


def ordered_pairs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersections and unions ``[max(G, K)]`` of ``gt[i]`` vs ``pred[i]`` (missing side = empty)."""
    g, k = gt.shape[0], pred.shape[0]
    n = min(g, k)
    gt_area, pred_area = mask_areas(gt), mask_areas(pred)
    inter = np.zeros(max(g, k), dtype=np.int64)
    inter[:n] = mask_areas(np.logical_and(gt[:n], pred[:n]))
    areas = np.zeros((2, max(g, k)), dtype=np.int64)
    areas[0, :g], areas[1, :k] = gt_area, pred_area
    return inter, areas.sum(axis=0) - inter


def evaluate_refer_question(
    q: MuseQuestion, pred: Prediction, split: str = "", missing: bool = False
) -> ReferSample:
    """Ordered comparison of one question's targets with its predicted masks."""
    gt = q.target_masks()
    masks = pred.decode_masks(q.height, q.width)
    predicted_empty = not masks.any()
    if gt.shape[0] == 0:
        inter = np.zeros(1, dtype=np.int64)
        union = np.array([int(np.logical_or.reduce(masks).sum()) if masks.shape[0] else 0])
    else:
        inter, union = ordered_pairs(gt, masks)
    return ReferSample(
        q.key, split, pred.mode, gt.shape[0], masks.shape[0], inter, union, predicted_empty, missing
    )


def summarize_refer(samples: Sequence[ReferSample]) -> dict[str, Any]:
    """gIoU over mask slots, cIoU, N-acc / T-acc (``None`` without such samples), counts."""
    ious = np.concatenate([s.ious for s in samples]) if samples else np.zeros(0)
    inter = int(sum(int(s.inter.sum()) for s in samples))
    union = int(sum(int(s.union.sum()) for s in samples))
    no_target = [s for s in samples if s.no_target]
    target = [s for s in samples if not s.no_target]
    return {
        "gIoU": float(ious.mean()) if ious.size else 0.0,
        "cIoU": inter / union if union else (1.0 if samples else 0.0),
        "samples": len(samples),
        "masks": int(ious.size),
        "missing": sum(s.missing for s in samples),
        "N-acc": sum(s.predicted_empty for s in no_target) / len(no_target) if no_target else None,
        "T-acc": sum(not s.predicted_empty for s in target) / len(target) if target else None,
        "no_target_samples": len(no_target),
    }


def evaluate_refer(
    gt: GtSource,
    predictions: PredSource,
    *,
    split: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Ordered gIoU/cIoU and N-acc/T-acc for one GT file (path or records) and its predictions."""
    return evaluate_refer_splits([(gt, predictions, split)], progress=progress)


def evaluate_refer_splits(
    parts: Sequence[tuple[GtSource, PredSource, str | None]], *, progress: bool = False
) -> dict[str, Any]:
    """``evaluate_refer`` over several (GT, predictions, split name) parts."""
    from tqdm.auto import tqdm

    samples: list[ReferSample] = []
    for gt, predictions, split in parts:
        records, source, default_split = load_ground_truth(gt, split)
        preds = load_predictions(predictions, records)
        modes = sorted({mode for _, _, mode in preds}) or [GENERATED]
        questions = list(iter_questions(records, source=source))
        for mode in modes:
            for q in tqdm(questions, desc=f"refer {mode}", disable=not progress, unit="q"):
                pred = preds.get((*q.key, mode))
                stand_in = empty_prediction(*q.key, teacher_forced=mode == TEACHER_FORCED)
                name = str(q.record.get("split") or default_split)
                samples.append(evaluate_refer_question(q, pred or stand_in, name, pred is None))
    main, modes_present = by_mode(samples)
    out: dict[str, Any] = {**summarize_refer(modes_present.get(main, [])), "judge": None, "mode": main}
    for m, v in modes_present.items():
        by_split: dict[str, list[ReferSample]] = defaultdict(list)
        for s in v:
            by_split[s.split].append(s)
        out[m] = {**summarize_refer(v), "splits": {k: summarize_refer(x) for k, x in by_split.items()}}
    out["settings"] = {"protocol": "refer", "order": "i-th mask vs i-th target"}
    return out
