"""MUSE-format ground truth: a JSON list of image records with questions and target annotations.

The same format serves MUSE (train/val/test_less/test_many), converted referring splits and
the synthetic set, so one reader and one evaluator serve all of them. Masks are decoded lazily
(``MuseQuestion.target_masks()``), never all held in memory.

Training uses ``muse_samples`` (lenient: a structurally broken record is skipped and counted,
never fatal); conversion, statistics and evaluation use ``load_muse`` (strict: the first
malformed record raises a ``DataError`` naming the file and record).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pixellm.data.masks import decode_segmentation, segmentation_rle
from pixellm.data.prompts import answer_from_descriptions, with_instruction
from pixellm.data.sample import SEG_PLACEHOLDER, Sample
from pixellm.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "SEG_PLACEHOLDER",
    "MuseQuestion",
    "decode_targets",
    "iter_questions",
    "load_muse",
    "muse_samples",
    "read_json_list",
    "resolve_image_path",
    "save_muse",
    "target_description",
    "UnsafePathError",
    "join_under_root",
    "validate_record",
]


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
    image_error: str | None = None  # why ``image_path`` is None (e.g. a name outside the root)

    @property
    def key(self) -> tuple[int, int]:
        return (self.image_index, self.question_index)

    def target_masks(self) -> np.ndarray:
        """Decode the targets' masks: bool array ``[G, H, W]`` (G may be 0)."""
        return decode_targets(
            self.targets,
            self.height,
            self.width,
            self.source or None,
            f"image {self.image_index} question {self.question_index}",
        )

    def target_rles(self) -> list[dict[str, Any]]:
        """The targets' masks as checked pycocotools RLE dicts, no pixels decoded (evaluation
        works on run lengths). ``DataError`` naming the file, question and target."""
        out = []
        for i, ann in enumerate(self.targets):
            try:
                if not isinstance(ann, dict):
                    raise DataError(f"target must be an annotation object, got {type(ann).__name__}")
                out.append(segmentation_rle(ann["segmentation"], self.height, self.width))
            except (DataError, KeyError) as err:
                detail = "missing field 'segmentation'" if isinstance(err, KeyError) else str(err)
                where = f"image {self.image_index} question {self.question_index}"
                raise DataError(f"{where} target {i}: {detail}", path=self.source or None) from err
        return out

    def descriptions(self) -> list[str]:
        """Text description of each target (``rephrased_name`` if present, else the category)."""
        return [target_description(a) for a in self.targets]

    def answer_text(self) -> str:
        """Answer with one ``{seg}`` per target: ``text_answers`` entry, else built from descriptions."""
        if self.text_answer is not None:
            return str(self.text_answer)
        return answer_from_descriptions(self.descriptions())

    def prompt(self, rng: random.Random | None = None, instruction: bool = True) -> str:
        """Question with the instruction suffix (canonical without ``rng``; inference/eval form),
        or without it (``instruction=False``)."""
        return with_instruction(self.question, rng) if instruction else self.question.strip()

    def to_sample(self, rng: random.Random | None = None, instruction: bool = True) -> Sample:
        """Training ``Sample`` with lazily decoded masks (a picklable partial)."""
        return Sample(
            image_path=self.image_path or "",
            question=self.prompt(rng, instruction),
            answer=self.answer_text(),
            load_masks=partial(
                decode_targets,
                self.targets,
                self.height,
                self.width,
                self.source or None,
                f"record {self.image_index} question {self.question_index}",
            ),
            source=self.source,
            meta={"path": self.source, "record": self.image_index, "question": self.question_index},
        )


def decode_targets(
    targets: list[Any], height: int, width: int, path: str | None = None, where: str = ""
) -> np.ndarray:
    """Decode annotation dicts' ``segmentation`` fields: bool ``[G, H, W]`` (G may be 0)."""
    masks = np.zeros((len(targets), height, width), dtype=bool)
    for i, ann in enumerate(targets):
        try:
            if not isinstance(ann, dict):
                raise DataError(f"target must be an annotation object, got {type(ann).__name__}")
            masks[i] = decode_segmentation(ann["segmentation"], height, width)
        except (DataError, KeyError) as err:
            detail = "missing field 'segmentation'" if isinstance(err, KeyError) else str(err)
            raise DataError(f"{where} target {i}: {detail}".strip(), path=path) from err
    return masks


def target_description(ann: dict[str, Any]) -> str:
    return str(ann.get("rephrased_name") or ann.get("category_name") or "object")


class UnsafePathError(DataError):
    """An image name that leaves the image root (absolute, or ``..`` above it)."""


def join_under_root(
    root: str | os.PathLike | None, name: str, allow_outside_root: bool = False
) -> str:
    """``root / name``, refusing names that would read outside ``root``.

    Data files come from elsewhere; a ``file_name`` such as ``../../home/me/.ssh/id.png`` or
    ``/etc/...`` must not make training or inference read arbitrary files. The check is lexical
    (``..`` and absolute paths), so symbolic links inside the root (a common data layout) keep
    working. ``allow_outside_root`` (``infer --allow-outside-root``, data source option
    ``allow_outside_root``) turns it off. Without a root there is nothing to escape.
    """
    path = Path(name)
    if root is None:
        return str(path)
    joined = os.path.normpath(os.path.join(root, name))
    base = os.path.normpath(root)
    inside = not path.is_absolute() and (joined == base or joined.startswith(base.rstrip(os.sep) + os.sep))
    if not inside and not allow_outside_root:
        raise UnsafePathError(f"image name {name!r} points outside the image root {str(root)!r}")
    return str(path) if path.is_absolute() else str(Path(root) / path)


def resolve_image_path(
    record: dict[str, Any], image_root: str | os.PathLike | None, allow_outside_root: bool = False
) -> str | None:
    """Image path of a record: ``file_name`` (relative to ``image_root``) or a COCO ``coco_url``.

    Raises ``UnsafePathError`` when the name leaves ``image_root`` (see :func:`join_under_root`).
    """
    name = record.get("file_name")
    if not name and record.get("coco_url"):
        url = str(record["coco_url"])  # .../train2017/000000xxxx.jpg -> train2017/000000xxxx.jpg
        parts = url.rstrip("/").split("/")
        name = "/".join(parts[-2:])
    if not name:
        return None
    return join_under_root(image_root, str(name), allow_outside_root)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; ``DataError`` naming the file (and the line) when it is not valid."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})", path=path) from err
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason})", path=path) from err


def read_json_list(path: str | os.PathLike) -> list[Any]:
    """Read a JSON file that must hold a list; ``DataError`` naming the file otherwise."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError("expected a JSON list of image records", path=str(path))
    return data


def load_muse(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load and validate the top-level structure of a MUSE JSON file (a list of image records)."""
    path = str(path)
    data = read_json_list(path)
    for i, rec in enumerate(data):
        validate_record(rec, path, i)
    return data


def save_muse(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write MUSE records as compact JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, separators=(",", ":"))


def muse_samples(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    rng: random.Random | None = None,
    source: str | None = None,
    allow_outside_root: bool = False,
    instruction: bool = True,
) -> tuple[list[Sample], Counter]:
    """Training ``Sample``s of a MUSE-format file, one per question.

    Lenient: a record that fails ``validate_record`` is skipped and counted under
    ``malformed_record`` in the returned counter (the dataset reports it); per-question
    problems (bad masks, ``{seg}`` count) surface later, when the sample is loaded.
    ``image_root`` defaults to the JSON file's folder. ``rng`` picks instruction paraphrases;
    ``instruction=False`` leaves the questions without the suffix.
    A record whose image name leaves the root is skipped (``unsafe_path``, one per question)
    and logged with its record number, unless ``allow_outside_root``.
    """
    path = str(path)
    records = read_json_list(path)
    root = Path(path).parent if image_root is None else image_root
    name = source if source is not None else path
    good: list[dict[str, Any]] = []
    index: list[int] = []
    skipped: Counter = Counter()
    for i, rec in enumerate(records):
        try:
            _validate_structure(rec, path, i)
        except DataError:
            skipped["malformed_record"] += 1
            continue
        good.append(rec)
        index.append(i)
    samples = []
    for rec_pos, rec in zip(index, good):
        try:
            image_path = resolve_image_path(rec, root, allow_outside_root)
        except UnsafePathError as err:
            n = len(rec["questions"])
            logger.warning("%s: record %d: %s; skipping its %d question(s)", path, rec_pos, err, n)
            skipped["unsafe_path"] += n
            continue
        for q in _iter_record(rec, rec_pos, image_path, name):
            samples.append(q.to_sample(rng, instruction))
    return samples, skipped


def _validate_structure(rec: Any, path: str, index: int) -> None:
    """``validate_record`` without the per-question ``{seg}`` check (the dataset counts those)."""
    where = f"record {index}"
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object", path=path)
    for key in ("height", "width", "questions", "answers"):
        if key not in rec:
            raise DataError(f"{where}: missing field '{key}'", path=path)
    try:
        int(rec["height"]), int(rec["width"])
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: 'height'/'width' must be integers", path=path) from err
    qs, ans, texts = rec["questions"], rec["answers"], rec.get("text_answers")
    if not isinstance(qs, list) or not isinstance(ans, list):
        raise DataError(f"{where}: 'questions' and 'answers' must be lists", path=path)
    if len(qs) != len(ans):
        raise DataError(f"{where}: {len(qs)} questions but {len(ans)} answers", path=path)
    if not all(isinstance(a, list) for a in ans):
        raise DataError(f"{where}: every 'answers' entry must be a list of targets", path=path)
    if texts is not None and (not isinstance(texts, list) or len(texts) != len(qs)):
        raise DataError(f"{where}: 'text_answers' must have one entry per question", path=path)


def validate_record(rec: Any, path: str, index: int) -> None:
    """Strict check of one record: structure, then each text answer's ``{seg}`` count."""
    _validate_structure(rec, path, index)
    texts = rec.get("text_answers") or []
    for q, (text, targets) in enumerate(zip(texts, rec["answers"])):
        if text is not None and str(text).count(SEG_PLACEHOLDER) != len(targets):
            raise DataError(
                f"record {index} question {q}: text answer has {str(text).count(SEG_PLACEHOLDER)} "
                f"{SEG_PLACEHOLDER} but {len(targets)} targets",
                path=path,
            )


def iter_questions(
    records: list[dict[str, Any]],
    image_root: str | os.PathLike | None = None,
    source: str = "",
    allow_outside_root: bool = False,
) -> Iterator[MuseQuestion]:
    """Every question of every record, in file order. A record whose image name leaves
    ``image_root`` gets ``image_path=None`` and the reason in ``image_error``."""
    for i, rec in enumerate(records):
        try:
            image_path, error = resolve_image_path(rec, image_root, allow_outside_root), None
        except UnsafePathError as err:
            image_path, error = None, str(err)
        yield from _iter_record(rec, i, image_path, source, error)


def _iter_record(
    rec: dict[str, Any], i: int, image_path: str | None, source: str, image_error: str | None = None
) -> Iterator[MuseQuestion]:
    texts = rec.get("text_answers") or [None] * len(rec["questions"])
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
            image_error=image_error,
        )
