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
    """

    image_path: str
    question: str
    answer: str
    load_masks: Callable[[], np.ndarray]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seg(self) -> int:
        """Number of ``{seg}`` placeholders (= targets) in the answer."""
        return self.answer.count(SEG_PLACEHOLDER)

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
