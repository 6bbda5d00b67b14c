"""MUSE-format ground truth: a JSON list of image records with questions and target annotations.

The same format serves MUSE (train/val/test_less/test_many), converted referring splits and
the synthetic set, so one reader and one evaluator serve all of them. Masks are decoded lazily
(``MuseQuestion.target_masks()``), never all held in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixellm.data.masks import decode_segmentation
from pixellm.errors import DataError

SEG_PLACEHOLDER = "{seg}"


@dataclass
class MuseQuestion:
    """One question of one image record, with its targets (annotation dicts) in answer order."""

    image_index: int
    question_index: int
    question: str
    targets: list[dict[str, Any]]
    text_answer: str | None
    height: int
    width: int
    image_path: str | None
    source: str = ""
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.image_index, self.question_index)

    def target_masks(self) -> np.ndarray:
        """Decode the targets' masks: bool array ``[G, H, W]`` (G may be 0)."""
        masks = np.zeros((len(self.targets), self.height, self.width), dtype=bool)
        for i, ann in enumerate(self.targets):
            try:
                masks[i] = decode_segmentation(ann["segmentation"], self.height, self.width)
            except (DataError, KeyError) as err:
                raise DataError(
                    f"image {self.image_index} question {self.question_index} target {i}: {err}",
                    path=self.source or None,
                ) from err
        return masks

    def descriptions(self) -> list[str]:
        """Text description of each target (``rephrased_name`` if present, else the category)."""
        return [target_description(a) for a in self.targets]


def target_description(ann: dict[str, Any]) -> str:
    return str(ann.get("rephrased_name") or ann.get("category_name") or "object")


def resolve_image_path(record: dict[str, Any], image_root: str | os.PathLike | None) -> str | None:
    """Image path of a record: ``file_name`` (relative to ``image_root``) or a COCO ``coco_url``."""
    name = record.get("file_name")
    if not name and record.get("coco_url"):
        url = str(record["coco_url"])  # .../train2017/000000xxxx.jpg -> train2017/000000xxxx.jpg
        parts = url.rstrip("/").split("/")
        name = "/".join(parts[-2:])
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute() and image_root is not None:
        path = Path(image_root) / path
    return str(path)


def load_muse(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load and validate the top-level structure of a MUSE JSON file (a list of image records)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at line {err.lineno})", path=path) from err
    if not isinstance(data, list):
        raise DataError("expected a JSON list of image records", path=path)
    for i, rec in enumerate(data):
        validate_record(rec, path, i)
    return data


def validate_record(rec: Any, path: str, index: int) -> None:
    where = f"record {index}"
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object", path=path)
    for key in ("height", "width", "questions", "answers"):
        if key not in rec:
            raise DataError(f"{where}: missing field '{key}'", path=path)
    if not isinstance(rec["questions"], list) or not isinstance(rec["answers"], list):
        raise DataError(f"{where}: 'questions' and 'answers' must be lists", path=path)
    if len(rec["questions"]) != len(rec["answers"]):
        raise DataError(
            f"{where}: {len(rec['questions'])} questions but {len(rec['answers'])} answers", path=path
        )
    texts = rec.get("text_answers")
    if texts is not None:
        if not isinstance(texts, list) or len(texts) != len(rec["questions"]):
            raise DataError(f"{where}: 'text_answers' must have one entry per question", path=path)
        for q, (text, targets) in enumerate(zip(texts, rec["answers"])):
            if text is not None and str(text).count(SEG_PLACEHOLDER) != len(targets):
                raise DataError(
                    f"{where} question {q}: text answer has {str(text).count(SEG_PLACEHOLDER)} "
                    f"{SEG_PLACEHOLDER} but {len(targets)} targets",
                    path=path,
                )


def iter_questions(
    records: list[dict[str, Any]], image_root: str | os.PathLike | None = None, source: str = ""
) -> Iterator[MuseQuestion]:
    """Every question of every record, in file order."""
    for i, rec in enumerate(records):
        texts = rec.get("text_answers") or [None] * len(rec["questions"])
        image_path = resolve_image_path(rec, image_root)
        for q, (question, targets, text) in enumerate(zip(rec["questions"], rec["answers"], texts)):
            yield MuseQuestion(
                image_index=i,
                question_index=q,
                question=str(question),
                targets=list(targets),
                text_answer=text,
                height=int(rec["height"]),
                width=int(rec["width"]),
                image_path=image_path,
                source=source,
                record=rec,
            )
