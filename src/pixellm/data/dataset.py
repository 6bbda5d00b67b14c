"""``SegmentationDataset``: ``Sample``s -> processor encodings; bad samples become ``None``.

A long training run must not die on one broken record, so every failure of one sample
(missing / unreadable image, image size different from the record, invalid polygon or RLE,
``{seg}`` count different from the number of masks, an encoder error) is caught, counted per
reason and returned as ``None`` (``pixellm.data.collate.collate`` skips ``None``). The counters
live in shared memory, so counts from DataLoader worker processes reach ``skipped_report()``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pixellm.data.sample import Sample
from pixellm.errors import PixelLMError

logger = logging.getLogger(__name__)

SKIP_REASONS: tuple[str, ...] = (
    "malformed_record",  # counted while reading the file (muse_samples / vqa_samples)
    "no_image",
    "missing_image",
    "unreadable_image",
    "size_mismatch",
    "bad_masks",
    "seg_count",
    "encode_error",
)

# encode(image, question, answer, masks) -> dict; e.g. PixelLMProcessor.encode_example.
EncodeFn = Callable[[Any, str, str, np.ndarray], dict]


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class SegmentationDataset(Dataset):
    """Torch dataset over ``Sample``s; item ``i`` = ``encode(image, question, answer, masks)``.

    Args:
        samples: the samples (any source).
        encode: called as ``encode(image, question, answer, masks)`` with a PIL RGB image and
            bool masks ``[K, H, W]``; pass ``processor.encode_example``.
        skipped: counts already skipped while reading (e.g. from ``muse_samples``), added to
            the report.
        name: label used in log messages.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        encode: EncodeFn,
        skipped: Mapping[str, int] | None = None,
        name: str = "",
    ):
        self.samples = list(samples)
        self.encode = encode
        self.name = name
        # Shared (not per-process) counters: workers inherit them when the loader starts.
        self._counts = mp.Array("q", len(SKIP_REASONS))
        self._warned: set[str] = set()
        for reason, n in (skipped or {}).items():
            self._add(reason, n)

    @classmethod
    def from_muse(
        cls,
        path: str | os.PathLike,
        encode: EncodeFn,
        image_root: str | os.PathLike | None = None,
        rng: random.Random | None = None,
    ) -> SegmentationDataset:
        """Dataset over a MUSE-format file (see ``muse.muse_samples``)."""
        from pixellm.data.muse import muse_samples

        samples, skipped = muse_samples(path, image_root, rng=rng)
        return cls(samples, encode, skipped, name=str(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image, masks = self.load(sample)
            try:
                return self.encode(image, sample.question, sample.answer, masks)
            except (PixelLMError, ValueError) as err:
                raise _Skip("encode_error", str(err)) from err
        except _Skip as skip:
            self._add(skip.reason, 1)
            if skip.reason not in self._warned:  # first of each reason per process, then counted
                self._warned.add(skip.reason)
                logger.warning("skipping %s (%s): %s", sample.where(), skip.reason, skip)
            return None

    @staticmethod
    def load(sample: Sample) -> tuple[Any, np.ndarray]:
        """``(PIL RGB image, masks [K, H, W])`` of a sample, checked; raises ``_Skip``."""
        from PIL import Image

        if not sample.image_path:
            raise _Skip("no_image", "record names no image")
        try:
            with Image.open(sample.image_path) as im:
                image = im.convert("RGB")
        except FileNotFoundError as err:
            raise _Skip("missing_image", f"{sample.image_path}: no such file") from err
        except Exception as err:  # PIL raises several types for corrupt files
            raise _Skip("unreadable_image", f"{sample.image_path}: {err}") from err
        try:
            masks = sample.load_masks()
        except FileNotFoundError as err:
            raise _Skip("missing_image", str(err)) from err
        except (PixelLMError, ValueError, KeyError, TypeError) as err:
            raise _Skip("bad_masks", str(err)) from err
        if masks.shape[1:] != (image.height, image.width):
            raise _Skip(
                "size_mismatch", f"image is {image.width}x{image.height}, masks {masks.shape[2]}x{masks.shape[1]}"
            )
        if sample.num_seg != masks.shape[0]:
            raise _Skip("seg_count", f"answer has {sample.num_seg} {{seg}} but {masks.shape[0]} targets")
        return image, masks

    def _add(self, reason: str, n: int) -> None:
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += int(n)

    def skipped_counts(self) -> dict[str, int]:
        """Skipped samples per reason (only reasons that occurred), across worker processes."""
        with self._counts.get_lock():
            values = list(self._counts)
        return {r: int(v) for r, v in zip(SKIP_REASONS, values) if v}

    def skipped_report(self) -> str:
        """One line: ``skipped 3 samples: missing_image 2, seg_count 1`` (or ``skipped 0 samples``)."""
        counts = Counter(self.skipped_counts())
        total = sum(counts.values())
        detail = ", ".join(f"{r} {n}" for r, n in counts.items())
        return f"skipped {total} samples" + (f": {detail}" if detail else "")
