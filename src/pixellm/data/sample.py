"""``Sample``: one training conversation (image, question, answer, lazily loaded target masks).

Every reader (MUSE, converted referring / semantic-segmentation sets, VQA, the synthetic set)
produces ``Sample``s, so the dataset, the mixer and the processor see one shape of data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from pixellm.errors import DataError

SEG_PLACEHOLDER = "{seg}"


@dataclass
class Sample:
    """One question-answer pair about one image.

    Attributes:
        image_path: path of the image file (RGB after loading).
        question: final question text, instruction suffix included.
        answer: answer text with one ``{seg}`` per target (plain text for VQA, no ``{seg}``).
        load_masks: callable returning the targets' masks, bool ``[K, H, W]`` at the image's
            size, in answer order. Called lazily (masks are never all held in memory); must be
            picklable (a ``functools.partial`` of a module-level function) for DataLoader workers.
        source: data-set name (``muse``, ``refcoco``, ``synth``, ``llava`` ...).
        meta: free-form provenance (file, record and question index ...).
        history: earlier ``(question, answer)`` turns of the same conversation, each answer
            supervised in training like the last one (:func:`pack_conversations`);
            ``load_masks`` then returns the targets of every answer, in order.
        supervise_masks: False trains the answer as text only: the masks are never loaded and
            its targets are not decoded (``DataSource.masks``).
    """

    image_path: str
    question: str
    answer: str
    load_masks: Callable[[], np.ndarray]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    history: tuple[tuple[str, str], ...] = ()
    supervise_masks: bool = True

    @property
    def num_seg(self) -> int:
        """Number of ``{seg}`` placeholders (= targets) in the answer(s)."""
        return sum(a.count(SEG_PLACEHOLDER) for _, a in self.history) + self.answer.count(SEG_PLACEHOLDER)

    def where(self) -> str:
        """Short provenance string for error messages: ``file:record qN``."""
        m = self.meta
        parts = [str(m.get("path", self.source or "?"))]
        if "record" in m:
            parts.append(f"record {m['record']}")
        if "question" in m:
            parts.append(f"question {m['question']}")
        return " ".join(parts)


def _empty_masks(height: int, width: int) -> np.ndarray:
    return np.zeros((0, height, width), dtype=bool)


def _empty_masks_from_image(image_path: str) -> np.ndarray:
    from PIL import Image  # header read only: PIL opens lazily

    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DataError(f"unreadable image ({err})", path=image_path) from err
    return np.zeros((0, height, width), dtype=bool)


def no_masks(height: int | None = None, width: int | None = None, image_path: str | None = None) -> Callable[[], np.ndarray]:
    """A picklable ``load_masks`` for samples without targets (VQA, no-target questions).

    With ``height``/``width`` it returns ``[0, H, W]`` directly; otherwise it reads the image
    header of ``image_path`` for the size.
    """
    if height is not None and width is not None:
        return partial(_empty_masks, int(height), int(width))
    if image_path is None:
        raise ValueError("no_masks needs height and width, or image_path")
    return partial(_empty_masks_from_image, str(image_path))


def _concat_masks(loaders: tuple[Callable[[], np.ndarray], ...]) -> np.ndarray:
    return np.concatenate([load() for load in loaders], axis=0)


def pack_conversations(samples: list[Sample], turns: int) -> list[Sample]:
    """Consecutive questions about the same image of the same record, ``turns`` at a time, as
    one multi-turn conversation (the earlier ones as supervised ``history``).

    The image and the template are then encoded once for several questions: on the demo's set,
    two questions per sequence cost ~0.78x the time per question (benchmarks/bench_pack_turns.py).
    ``turns`` = 1 returns ``samples`` unchanged. Order is kept; a record's last chunk may be
    shorter."""
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    if turns == 1:
        return samples
    out: list[Sample] = []
    chunk: list[Sample] = []

    def key(s: Sample) -> tuple:
        return s.image_path, s.source, s.meta.get("path"), s.meta.get("record")

    def flush() -> None:
        if len(chunk) == 1:
            out.append(chunk[0])
        elif chunk:
            first, last = chunk[0], chunk[-1]
            out.append(Sample(
                first.image_path, last.question, last.answer,
                partial(_concat_masks, tuple(s.load_masks for s in chunk)),
                first.source, dict(first.meta, turns=len(chunk)),
                tuple(h for s in chunk[:-1] for h in (*s.history, (s.question, s.answer))) + last.history,
            ))
        chunk.clear()

    for s in samples:
        if chunk and (len(chunk) == turns or key(s) != key(chunk[0])):
            flush()
        chunk.append(s)
    flush()
    return out
