"""Inputs shared by both evaluators: ground truth (path or records) and the mode split of results."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pixellm.data.muse import load_muse, validate_record
from pixellm.eval.predictions import GENERATED, TEACHER_FORCED

GtSource = str | os.PathLike | Sequence[dict[str, Any]]
PredSource = str | os.PathLike | Iterable[dict[str, Any]]
T = TypeVar("T")


def load_ground_truth(gt: GtSource, split: str | None = None) -> tuple[list[dict[str, Any]], str, str]:
    """``(records, source name, default split)``; the split defaults to the file stem ("all" in memory)."""
    if isinstance(gt, str | os.PathLike):
        return load_muse(gt), str(gt), split or Path(gt).stem
    records = list(gt)
    for i, rec in enumerate(records):
        validate_record(rec, "<ground truth>", i)
    return records, "<ground truth>", split or "all"


def by_mode(samples: Sequence[T], mode_of: Any = lambda s: s.mode) -> tuple[str, dict[str, list[T]]]:
    """Group results by mode; the headline mode is ``generated`` unless only teacher-forced exist."""
    groups = {m: [s for s in samples if mode_of(s) == m] for m in (GENERATED, TEACHER_FORCED)}
    groups = {m: v for m, v in groups.items() if v}
    main = TEACHER_FORCED if groups and GENERATED not in groups else GENERATED
    return main, groups
