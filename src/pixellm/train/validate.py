"""Periodic validation during training: teacher-forced gIoU / cIoU on a held-out split.

Teacher-forced = the ground-truth answer is fed in and the masks decoded from its codebook
groups, so the i-th predicted mask belongs to the i-th target (no matching, no generation:
cheap enough to run every few hundred steps). Sample IoU = mean over its masks of I/U (empty vs
empty = 1; a sample without targets = 1); gIoU = mean over samples; cIoU = sum I / sum U. The
full MUSE protocol on generated answers runs after training (``pixellm eval muse``, the demo).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from pixellm.train.data import to_device


def mask_iou_stats(pred_logits: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask intersection and union (``K``) of ``pred_logits > 0`` against ``gt`` (``K x H x W``)."""
    p = pred_logits > 0
    t = gt.bool()
    inter = (p & t).flatten(1).sum(1)
    union = (p | t).flatten(1).sum(1)
    return inter, union


class IoUAccumulator:
    """Running gIoU / cIoU over samples."""

    def __init__(self) -> None:
        self.sample_ious: list[float] = []
        self.inter = 0
        self.union = 0

    def add(self, pred_logits: torch.Tensor, gt: torch.Tensor) -> None:
        if gt.shape[0] == 0:
            self.sample_ious.append(1.0)
            return
        inter, union = mask_iou_stats(pred_logits.float(), gt)
        ious = torch.where(union > 0, inter.float() / union.clamp(min=1).float(), torch.ones_like(inter, dtype=torch.float))
        self.sample_ious.append(float(ious.mean()))
        self.inter += int(inter.sum())
        self.union += int(union.sum())

    def result(self) -> dict[str, Any]:
        n = len(self.sample_ious)
        return {
            "gIoU": sum(self.sample_ious) / n if n else 0.0,
            "cIoU": self.inter / self.union if self.union else (1.0 if n else 0.0),
            "samples": n,
        }


@torch.no_grad()
def teacher_forced_iou(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """gIoU / cIoU / samples of ``model`` over collated batches with ``gt_masks``."""
    was_training = model.training
    model.eval()
    acc = IoUAccumulator()
    try:
        for batch in batches:
            batch = to_device({k: v for k, v in batch.items() if k not in ("skips", "labels")}, device)
            gt = batch.pop("gt_masks")
            out = model(**batch)
            for pred, target in zip(out.pred_masks, gt):
                acc.add(pred, target)
    finally:
        model.train(was_training)
    return acc.result()
