"""The MUSE evaluation protocol (docs/evaluation.md; supplement A, "Details of the evaluation metric").

Per question-answer sample with G GT masks and K predicted masks, P = max(G, K):
1. Hungarian matching on exact BCE + Dice costs, both sets padded with empty masks to P
   (``matching.py``).
2. Each ``[SEG]`` marker is replaced by "(matched GT description)" or "(None)" (``rewrite.py``).
3. A judge scores each prediction; predictions matched to padding score 0 whatever the judge says.
4. Gating: a pair's intersection counts only if its score > 0.5. Pair IoU = gated I / U, where
   U is the union of the two masks; an unmatched GT or prediction has I = 0 and U = its own area.
   A pair whose union is empty (empty GT mask and empty prediction) has IoU 1 if it passes the
   gate, else 0. Sample IoU = sum of pair IoUs / P; a sample with G = K = 0 scores 1.
   gIoU = mean sample IoU; cIoU = sum of gated intersections / sum of unions (1 when both are 0).

Results are reported for generated and teacher-forced predictions separately, per split and per
GT target-count bucket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from pixellm.data.masks import rle_run_lengths, run_pair_counts
from pixellm.data.muse import MuseQuestion, iter_questions
from pixellm.eval.judges.base import Judge, JudgeItem, make_judge
from pixellm.eval.matching import EPS, match_binary, match_counts, match_soft, pair_counts
from pixellm.eval.predictions import (
    GENERATED,
    TEACHER_FORCED,
    Prediction,
    empty_prediction,
    load_predictions,
)
from pixellm.eval.rewrite import rewrite_answer
from pixellm.eval.sources import GtSource, PredSource, by_mode, load_ground_truth

GATE = 0.5
BUCKETS = ((0, 0, "0"), (1, 1, "1"), (2, 2, "2"), (3, 3, "3"), (4, 5, "4-5"), (6, None, "6+"))


@dataclass
class PairResult:
    """One of the P matched slots: GT ``gt`` (None = padding) with prediction ``pred`` (None = padding)."""

    gt: int | None
    pred: int | None
    intersection: int  # before gating
    union: int
    score: float

    @property
    def passed(self) -> bool:
        return self.score > GATE

    @property
    def gated_intersection(self) -> int:
        return self.intersection if self.passed else 0

    @property
    def iou(self) -> float:
        if self.union == 0:
            return 1.0 if self.passed else 0.0
        return self.gated_intersection / self.union


@dataclass
class SampleResult:
    """The protocol's outcome for one question."""

    key: tuple[int, int]
    split: str
    mode: str
    num_gt: int
    num_pred: int
    pairs: list[PairResult]
    missing: bool = False
    answer: str = ""
    rewritten: str = ""
    scores: list[float] = field(default_factory=list)  # [K], judge scores after padding rule

    @property
    def iou(self) -> float:
        return sum(p.iou for p in self.pairs) / len(self.pairs) if self.pairs else 1.0

    @property
    def intersection(self) -> int:
        return sum(p.gated_intersection for p in self.pairs)

    @property
    def union(self) -> int:
        return sum(p.union for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.key[0],
            "question": self.key[1],
            "split": self.split,
            "gt": self.num_gt,
            "pred": self.num_pred,
            "iou": self.iou,
            "intersection": self.intersection,
            "union": self.union,
            "missing": self.missing,
            "answer": self.answer,
            "rewritten": self.rewritten,
            "scores": self.scores,
            "pairs": [[p.gt, p.pred, p.intersection, p.union, p.score] for p in self.pairs],
        }


@dataclass
class Matching:
    """Step 1 result: ``matched[k]`` = GT index of prediction k (None = padding), plus pair sums."""

    matched: list[int | None]
    unmatched_gt: list[int]
    inter: np.ndarray  # [G, K] int
    gt_area: np.ndarray  # [G]
    pred_area: np.ndarray  # [K]


def match_masks(
    gt: np.ndarray,
    pred: np.ndarray,
    mask_scores: np.ndarray | None = None,
    mask_logits: np.ndarray | None = None,
    eps: float = EPS,
) -> Matching:
    """Step 1 for bool GT ``[G, H, W]`` and bool predictions ``[K, H, W]``.

    Costs use ``mask_logits`` (``[K, H, W]``, sigmoid probabilities) when given, else the binary
    masks with ``mask_scores`` as foreground probability (see ``matching.py``).
    """
    k = pred.shape[0]
    if mask_logits is not None and k:
        probs = expit(np.asarray(mask_logits, dtype=np.float64))  # overflow-safe sigmoid
        perm, _ = match_soft(gt, probs, eps)
        inter, gt_area, pred_area = pair_counts(gt, pred)
    else:
        perm, inter, gt_area, pred_area, _ = match_binary(gt, pred, mask_scores, eps)
    return matching_from_perm(perm, inter, gt_area, pred_area)


def matching_from_perm(
    perm: np.ndarray, inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray
) -> Matching:
    """The :class:`Matching` of an assignment ``perm`` (GT slot -> prediction slot, padded)."""
    g, k = len(gt_area), len(pred_area)
    matched: list[int | None] = [None] * k
    unmatched_gt = []
    for i, j in enumerate(perm):
        if i < g and j < k:
            matched[j] = i
        elif i < g:
            unmatched_gt.append(i)
    return Matching(
        matched=matched,
        unmatched_gt=unmatched_gt,
        inter=inter,
        gt_area=gt_area,
        pred_area=pred_area,
    )


def protocol_pairs(m: Matching, scores: Sequence[float]) -> list[PairResult]:
    """Step 4 inputs: the P (GT, prediction) slots with raw intersection, union and score."""
    pairs = []
    for k, g in enumerate(m.matched):
        if g is None:  # prediction matched to padding: its whole area is union, score forced 0
            pairs.append(PairResult(None, k, 0, int(m.pred_area[k]), 0.0))
        else:
            inter = int(m.inter[g, k])
            union = int(m.gt_area[g] + m.pred_area[k] - inter)
            pairs.append(PairResult(g, k, inter, union, float(scores[k])))
    for g in m.unmatched_gt:  # GT matched to padding: no prediction, its area is union
        pairs.append(PairResult(g, None, 0, int(m.gt_area[g]), 0.0))
    return pairs


def gt_boxes(question: MuseQuestion, masks: np.ndarray) -> list[list[float]]:
    """GT boxes as [x0, y0, x1, y1]: from ``bbox`` [x, y, w, h] or, without one, from the mask."""
    boxes = []
    for ann, mask in zip(question.targets, masks):
        bbox = ann.get("bbox")
        if isinstance(bbox, list | tuple) and len(bbox) == 4:
            x, y, w, h = (float(v) for v in bbox)
            boxes.append([x, y, x + w, y + h])
            continue
        ys, xs = np.nonzero(mask)
        boxes.append(
            [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            if len(xs)
            else [0.0] * 4
        )
    return boxes


class LazyBoxes(Sequence):
    """GT boxes computed on first use: the oracle judge never looks at them."""

    def __init__(self, compute: Callable[[], list[list[float]]]) -> None:
        self._compute = compute
        self._boxes: list[list[float]] | None = None

    def _get(self) -> list[list[float]]:
        if self._boxes is None:
            self._boxes = self._compute()
        return self._boxes

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return list(self._get()) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(self._get())


def rle_boxes(question: MuseQuestion, rles: Sequence[dict[str, Any]]) -> list[list[float]]:
    """:func:`gt_boxes` from RLEs (``bbox`` field first, else the mask's box; no decoding)."""
    from pycocotools import mask as mask_utils

    boxes = []
    for ann, rle in zip(question.targets, rles):
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
            bbox = mask_utils.toBbox(rle).tolist()  # [x, y, w, h]; zeros for an empty mask
        x, y, w, h = (float(v) for v in bbox)
        boxes.append([x, y, x + w, y + h])
    return boxes


def evaluate_question(
    question: MuseQuestion,
    pred: Prediction,
    judge: Judge,
    split: str = "",
    missing: bool = False,
    decode: bool = False,
) -> SampleResult:
    """Steps 1-4 for one question.

    Binary predictions stored as RLE (``PRED.jsonl``) are matched on exact intersections and
    areas computed from the run lengths, with no pixel decoded; predictions with per-pixel
    logits (in memory) or bool arrays use the decoded masks. Both give the same integers, so
    the same metrics. GT boxes are computed only if the judge reads them. ``decode=True``
    forces the decoded-pixel path (benchmarks and tests compare the two).
    """
    height, width = question.height, question.width
    if not decode and pred.mask_logits is None and not isinstance(pred.masks, np.ndarray):
        rles = question.target_rles()
        inter, gt_area, pred_area = run_pair_counts(
            [rle_run_lengths(r["counts"]) for r in rles], pred.mask_runs(height, width)
        )
        perm, _ = match_counts(inter, gt_area, pred_area, height * width, pred.mask_scores)
        m = matching_from_perm(perm, inter, gt_area, pred_area)
        boxes = LazyBoxes(lambda: rle_boxes(question, rles))
    else:
        gt = question.target_masks()
        masks = pred.decode_masks(height, width)
        m = match_masks(gt, masks, pred.mask_scores, pred.mask_logits)
        boxes = LazyBoxes(lambda: gt_boxes(question, gt))
    num_gt, num_pred = len(m.gt_area), len(m.matched)
    descriptions = question.descriptions()
    matched_desc = [None if g is None else descriptions[g] for g in m.matched]
    rewritten = rewrite_answer(pred.answer, matched_desc)
    if num_pred:
        item = JudgeItem(
            key=question.key,
            question=question.question,
            answer=pred.answer,
            rewritten=rewritten,
            matched=m.matched,
            descriptions=descriptions,
            boxes=boxes,
            height=height,
            width=width,
            caption=question.record.get("caption"),
            names=[str(t.get("category_name") or "") for t in question.targets],
        )
        raw = judge.score(item)
        if len(raw) != len(m.matched):
            raise ValueError(
                f"judge '{judge.name}' returned {len(raw)} scores for {len(m.matched)} predictions"
            )
        scores = [0.0 if g is None else float(s) for g, s in zip(m.matched, raw)]
    else:
        scores = []
    return SampleResult(
        key=question.key,
        split=split,
        mode=pred.mode,
        num_gt=num_gt,
        num_pred=num_pred,
        pairs=protocol_pairs(m, scores),
        missing=missing,
        answer=pred.answer,
        rewritten=rewritten,
        scores=scores,
    )


def bucket_of(num_gt: int) -> str:
    """Target-count bucket name: 0, 1, 2, 3, 4-5, 6+."""
    for lo, hi, name in BUCKETS:
        if num_gt >= lo and (hi is None or num_gt <= hi):
            return name
    raise ValueError(f"negative target count {num_gt}")


def summarize(samples: Sequence[SampleResult]) -> dict[str, Any]:
    """gIoU (mean sample IoU), cIoU (sum gated I / sum U), sample and missing counts."""
    inter = sum(s.intersection for s in samples)
    union = sum(s.union for s in samples)
    return {
        "gIoU": float(np.mean([s.iou for s in samples])) if samples else 0.0,
        "cIoU": inter / union if union else (1.0 if samples else 0.0),
        "samples": len(samples),
        "missing": sum(s.missing for s in samples),
    }


def report(samples: Sequence[SampleResult], details: bool = False) -> dict[str, Any]:
    """Overall, per-split and per-bucket summaries of one mode's samples."""
    out = summarize(samples)
    by_split: dict[str, list[SampleResult]] = defaultdict(list)
    by_bucket: dict[str, list[SampleResult]] = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
        by_bucket[bucket_of(s.num_gt)].append(s)
    out["splits"] = {name: summarize(v) for name, v in by_split.items()}
    out["buckets"] = {name: summarize(by_bucket[name]) for _, _, name in BUCKETS if name in by_bucket}
    if details:
        out["per_sample"] = [s.to_dict() for s in samples]
    return out


def collect_samples(
    gt: GtSource,
    predictions: PredSource,
    judge: Judge,
    split: str | None = None,
    progress: bool = False,
    decode: bool = False,
) -> list[SampleResult]:
    """Evaluate every GT question for every prediction mode present (missing lines = empty answers).

    A question's split is its record's ``split`` field, else ``split``, else the GT file's stem.
    """
    records, source, default_split = load_ground_truth(gt, split)
    preds = load_predictions(predictions, records)
    modes = sorted({mode for _, _, mode in preds}) or [GENERATED]
    questions = list(iter_questions(records, source=source))
    from tqdm.auto import tqdm

    results = []
    for mode in modes:
        tf = mode == TEACHER_FORCED
        for q in tqdm(questions, desc=f"MUSE {mode}", disable=not progress, unit="q"):
            pred = preds.get((*q.key, mode))
            missing = pred is None
            pred = pred or empty_prediction(*q.key, teacher_forced=tf)
            name = str(q.record.get("split") or default_split)
            results.append(evaluate_question(q, pred, judge, name, missing, decode))
    return results


def evaluate_muse(
    gt: GtSource,
    predictions: PredSource,
    judge: str | Judge = "oracle",
    *,
    split: str | None = None,
    judge_options: dict[str, Any] | None = None,
    details: bool = False,
    progress: bool = False,
    decode: bool = False,
) -> dict[str, Any]:
    """MUSE protocol metrics for one GT file (path or list of records) and its predictions.

    ``predictions``: a ``PRED.jsonl`` path or dicts in that format. Returns the metrics JSON:
    top-level ``gIoU``/``cIoU``/``samples``/``missing`` of the generated predictions (teacher-forced
    when only those exist), ``judge``, and per mode (``generated`` / ``teacher_forced``) the
    same plus ``splits`` and ``buckets`` tables.
    """
    return evaluate_muse_splits(
        [(gt, predictions, split)], judge, judge_options=judge_options, details=details, progress=progress,
        decode=decode,
    )


def evaluate_muse_splits(
    parts: Sequence[tuple[GtSource, PredSource, str | None]],
    judge: str | Judge = "oracle",
    *,
    judge_options: dict[str, Any] | None = None,
    details: bool = False,
    progress: bool = False,
    decode: bool = False,
) -> dict[str, Any]:
    """Like ``evaluate_muse`` over several (GT, predictions, split name) parts, e.g. val + test_less."""
    own = isinstance(judge, str)
    judge_obj = make_judge(judge, **(judge_options or {})) if isinstance(judge, str) else judge
    try:
        samples = [
            s for gt, pred, split in parts for s in collect_samples(gt, pred, judge_obj, split, progress, decode)
        ]
    finally:
        if own:
            judge_obj.close()
    return build_metrics(samples, judge_obj.name, details)


def build_metrics(samples: Sequence[SampleResult], judge_name: str, details: bool = False) -> dict[str, Any]:
    """Assemble the metrics JSON from evaluated samples."""
    main, modes = by_mode(samples)
    top = summarize(modes.get(main, []))
    out: dict[str, Any] = {**top, "judge": judge_name, "mode": main}
    for m, v in modes.items():
        out[m] = report(v, details)
    out["settings"] = {"gate": GATE, "bce_eps": EPS, "protocol": "muse"}
    return out
