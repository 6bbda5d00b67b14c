"""Evaluation: the MUSE protocol (Hungarian matching, answer rewriting, judges, gated gIoU/cIoU)
and ordered referring metrics with no-target accuracy. See ``docs/evaluation.md``."""

from pixellm.eval.muse_protocol import evaluate_muse, evaluate_muse_splits
from pixellm.eval.refer_metrics import evaluate_refer, evaluate_refer_splits

__all__ = ["evaluate_muse", "evaluate_muse_splits", "evaluate_refer", "evaluate_refer_splits"]
