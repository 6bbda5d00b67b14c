"""Reading and validating predictions (``PRED.jsonl`` lines or the same dicts in memory).

One prediction per (image, question, teacher_forced). Every line is checked against the ground
truth before any evaluation starts, so a bad file fails fast with its line number. Masks stay
as RLE until a question is evaluated (``Prediction.decode_masks``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixellm.conventions import SEG_MARKER
from pixellm.data.masks import check_rle_counts, decode_rle
from pixellm.errors import DataError

GENERATED = "generated"
TEACHER_FORCED = "teacher_forced"


@dataclass
class Prediction:
    """One validated prediction. ``masks`` are RLE dicts or an in-memory bool array ``[K, H, W]``."""

    image: int
    question: int
    answer: str
    masks: list[dict[str, Any]] | np.ndarray
    mask_scores: np.ndarray | None
    mask_logits: np.ndarray | None  # in-memory only: float [K, H, W]
    teacher_forced: bool
    line: int
    source: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.image, self.question)

    @property
    def mode(self) -> str:
        return TEACHER_FORCED if self.teacher_forced else GENERATED

    @property
    def num_masks(self) -> int:
        return len(self.masks)

    def decode_masks(self, height: int, width: int) -> np.ndarray:
        """Bool masks ``[K, H, W]``; a corrupt RLE raises ``DataError`` naming the line."""
        if isinstance(self.masks, np.ndarray):
            return self.masks.astype(bool, copy=False)
        out = np.zeros((len(self.masks), height, width), dtype=bool)
        for i, rle in enumerate(self.masks):
            try:
                out[i] = decode_rle(rle)
            except DataError as err:
                raise DataError(f"masks[{i}]: {err}", path=self.source, record=f"line {self.line}") from err
        return out


    def mask_runs(self, height: int, width: int) -> list[np.ndarray]:
        """Checked run lengths of each RLE mask (no pixels decoded); ``DataError`` naming the line."""
        out = []
        for i, rle in enumerate(self.masks):
            try:
                out.append(check_rle_counts(_counts_bytes(rle["counts"]), height, width))
            except DataError as err:
                raise DataError(f"masks[{i}]: {err}", path=self.source, record=f"line {self.line}") from err
        return out


def _counts_bytes(counts: str | bytes) -> bytes:
    return counts.encode() if isinstance(counts, str) else bytes(counts)


def empty_prediction(image: int, question: int, teacher_forced: bool = False) -> Prediction:
    """The stand-in for a question without a prediction line: no text, no masks."""
    return Prediction(image, question, "", [], None, None, teacher_forced, 0, "<missing>")


def read_prediction_lines(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for every non-blank line of a JSONL file."""
    path = str(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON ({err.msg} at column {err.colno})", path=path,
                                record=f"line {n}") from err
    return out


def load_predictions(
    predictions: str | os.PathLike | Iterable[dict[str, Any]],
    records: Sequence[dict[str, Any]],
) -> dict[tuple[int, int, str], Prediction]:
    """Validate predictions against the GT records; key ``(image, question, mode)``.

    ``predictions`` is a JSONL path or an iterable of dicts in the same format (line numbers
    then count from 1 in iteration order). In memory, ``masks`` may also be a bool array
    ``[K, H, W]`` and ``mask_logits`` a float array ``[K, H, W]``.
    """
    if isinstance(predictions, str | os.PathLike):
        source = str(predictions)
        items = read_prediction_lines(source)
    else:
        source = "<predictions>"
        items = list(enumerate(predictions, start=1))
    out: dict[tuple[int, int, str], Prediction] = {}
    for n, obj in items:
        pred = parse_prediction(obj, records, source, n)
        key = (*pred.key, pred.mode)
        if key in out:
            raise DataError(
                f"duplicate {pred.mode} prediction for image {pred.image} question {pred.question} "
                f"(first on line {out[key].line})",
                path=source,
                record=f"line {n}",
            )
        out[key] = pred
    return out


def parse_prediction(obj: Any, records: Sequence[dict[str, Any]], source: str, line: int) -> Prediction:
    """Check one prediction object against the GT; raise ``DataError`` naming ``source:line N``."""

    def fail(msg: str) -> DataError:
        return DataError(msg, path=source, record=f"line {line}")

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    for field in ("image", "question", "answer", "masks"):
        if field not in obj:
            raise fail(f"missing field '{field}'")
    image, question = obj["image"], obj["question"]
    if not _is_int(image) or not 0 <= image < len(records):
        raise fail(f"'image' {image!r} is not an image index of the ground truth (0..{len(records) - 1})")
    rec = records[image]
    if not _is_int(question) or not 0 <= question < len(rec["questions"]):
        raise fail(
            f"'question' {question!r} does not exist in image {image} ({len(rec['questions'])} questions)"
        )
    answer = obj["answer"]
    if not isinstance(answer, str):
        raise fail("'answer' must be a string")
    height, width = int(rec["height"]), int(rec["width"])
    masks = obj["masks"]
    markers = answer.count(SEG_MARKER)
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (height, width):
            raise fail(f"masks array has shape {masks.shape}, expected [K, {height}, {width}]")
    elif isinstance(masks, list):
        for i, rle in enumerate(masks):
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                raise fail(f"masks[{i}] is not an RLE dict with 'size' and 'counts'")
            if not isinstance(rle["size"], list) or [_as_int(s) for s in rle["size"]] != [height, width]:
                raise fail(f"masks[{i}] has size {rle['size']}, image {image} is {[height, width]}")
            if not isinstance(rle["counts"], str | bytes):
                raise fail(f"masks[{i}] 'counts' must be a compressed RLE string")
    else:
        raise fail("'masks' must be a list of RLE dicts")
    if len(masks) != markers:
        raise fail(f"{len(masks)} masks but {markers} {SEG_MARKER} markers in the answer")
    scores = _parse_scores(obj.get("mask_scores"), len(masks), fail)
    logits = obj.get("mask_logits")
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(masks), height, width):
            raise fail(f"mask_logits has shape {logits.shape}, expected {(len(masks), height, width)}")
    tf = obj.get("teacher_forced", False)
    if not isinstance(tf, bool):
        raise fail("'teacher_forced' must be true or false")
    return Prediction(image, question, answer, masks, scores, logits, tf, line, source)


def _parse_scores(raw: Any, count: int, fail: Any) -> np.ndarray | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple | np.ndarray) or len(raw) != count:
        raise fail(f"'mask_scores' must be a list of {count} numbers (one per mask)")
    try:
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise fail("'mask_scores' must hold numbers") from err
    if not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores):
        raise fail("'mask_scores' must be probabilities in [0, 1]")
    return scores


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _as_int(x: Any) -> int | None:
    return int(x) if _is_int(x) else None
