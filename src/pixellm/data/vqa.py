"""LLaVA-Instruct-style VQA conversations -> ``Sample``s without masks.

On disk: a JSON list of ``{"id", "image": "000000033471.jpg", "conversations": [{"from":
"human", "value": "<image>\\nWhat ..."}, {"from": "gpt", "value": "..."}, ...]}``. Each
human/gpt turn pair becomes one ``Sample`` (the processor places the image itself, so the
``<image>`` token is removed from the question). No instruction suffix: these answers are text.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pixellm.data.muse import join_under_root, read_json_list
from pixellm.data.sample import Sample, no_masks
from pixellm.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN_RE = re.compile(r"\s*<image>\s*")
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def strip_image_token(text: str) -> str:
    """Remove ``<image>`` and the whitespace around it."""
    return _IMAGE_TOKEN_RE.sub(" ", text).strip()


def conversation_turns(record: Any, path: str, index: int) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of one record; ``DataError`` naming file and record if malformed."""
    if not isinstance(record, dict):
        raise DataError("expected an object", path=path, record=index)
    conv = record.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise DataError("'conversations' must be a list of at least two turns", path=path, record=index)
    turns = []
    for t in range(0, len(conv) - 1, 2):
        q, a = conv[t], conv[t + 1]
        ok = (
            isinstance(q, dict) and isinstance(a, dict)
            and q.get("from") in HUMAN_ROLES and a.get("from") in ASSISTANT_ROLES
            and isinstance(q.get("value"), str) and isinstance(a.get("value"), str)
        )
        if not ok:
            raise DataError(
                f"turns {t},{t + 1} must be human then gpt with string 'value's", path=path, record=index
            )
        turns.append((strip_image_token(q["value"]), a["value"].strip()))
    return turns


def vqa_samples(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    turns: str = "all",
    source: str = "vqa",
    allow_outside_root: bool = False,
) -> tuple[list[Sample], Counter]:
    """Samples of a LLaVA-Instruct JSON file, one per turn pair (``turns="first"``: first only).

    Records without an ``image`` are text-only and skipped, as are malformed ones; both are
    counted in the returned counter (``no_image``, ``malformed_record``; ``unsafe_path`` for an
    image name outside ``image_root``, unless ``allow_outside_root``).
    ``image_root`` defaults to the JSON file's folder.
    """
    if turns not in ("all", "first"):
        raise ValueError(f"turns must be 'all' or 'first', got {turns!r}")
    path = str(path)
    root = Path(path).parent if image_root is None else Path(image_root)
    samples: list[Sample] = []
    skipped: Counter = Counter()
    for i, rec in enumerate(read_json_list(path)):
        try:
            pairs = conversation_turns(rec, path, i)
        except DataError:
            skipped["malformed_record"] += 1
            continue
        if not rec.get("image"):
            skipped["no_image"] += 1
            continue
        try:
            image_path = join_under_root(root, str(rec["image"]), allow_outside_root)
        except DataError as err:
            logger.warning("%s: record %d: %s; skipped", path, i, err)
            skipped["unsafe_path"] += len(pairs[:1] if turns == "first" else pairs)
            continue
        for t, (question, answer) in enumerate(pairs[:1] if turns == "first" else pairs):
            samples.append(
                Sample(
                    image_path=image_path,
                    question=question,
                    answer=answer,
                    load_masks=no_masks(image_path=image_path),
                    source=source,
                    meta={"path": path, "record": i, "question": t, "id": rec.get("id")},
                )
            )
    return samples, skipped
