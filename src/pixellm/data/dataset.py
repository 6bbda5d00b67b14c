"""``SegmentationDataset``: ``Sample``s of one or more sources -> processor encodings.

A long training run must not die on one broken record, and a batch must keep its size, so a bad
sample (no / missing / unreadable image, image size different from the record, invalid polygon
or RLE, ``{seg}`` count different from the number of masks, an encoder error) is replaced by the
next good sample of the same source. Every replaced sample travels with the item as a
:class:`Skip` (reason, location, detail); because the report is part of the item, it reaches the
main process from DataLoader workers and is counted only for batches that were really used
(``skip_counts`` / ``skipped_report`` make the end-of-training report).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pixellm.data.sample import Sample
from pixellm.errors import ConfigError, DataError, PixelLMError

SKIP_REASONS: tuple[str, ...] = (
    "malformed_record",  # counted while reading the file (muse_samples / vqa_samples)
    "unsafe_path",  # image name outside the image root (counted while reading, per question)
    "no_image",
    "missing_image",
    "unreadable_image",
    "image_too_large",
    "size_mismatch",
    "bad_masks",
    "seg_count",
    "encode_error",
)
MAX_RETRIES = 16  # consecutive bad samples before the source is declared broken

# encode(image, question, answer, masks) -> dict; e.g. PixelLMProcessor.encode_example.
EncodeFn = Callable[..., dict]  # (image, question, answer, masks[, history=, supervise_history=])


@dataclass(frozen=True)
class Skip:
    """A sample that could not be used: why (one of ``SKIP_REASONS``), where it came from
    (``Sample.where()``) and the first line of the error."""

    reason: str
    where: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r} (known: {', '.join(SKIP_REASONS)})")


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def skip_counts(counts: Mapping[str, int] | None = None, skips: Iterable[Skip] = ()) -> Counter:
    """Skipped samples per reason: ``counts`` (e.g. from reading the files) plus ``skips``.

    Raises ``ValueError`` for a reason not in ``SKIP_REASONS``.
    """
    total: Counter = Counter()
    for reason, n in (counts or {}).items():
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r} (known: {', '.join(SKIP_REASONS)})")
        total[reason] += int(n)
    total.update(s.reason for s in skips)
    return total


def skipped_report(counts: Mapping[str, int], replacements: int | None = None) -> str:
    """One line: ``skipped 3 samples: missing_image 2, seg_count 1`` (or ``skipped 0 samples``),
    plus ``; 41 replacements`` when ``replacements`` is given.

    Reasons in ``SKIP_REASONS`` order; unknown keys (e.g. from an older checkpoint) at the end.
    """
    order = [r for r in SKIP_REASONS if counts.get(r)] + sorted(k for k in counts if k not in SKIP_REASONS)
    total = sum(int(v) for v in counts.values())
    detail = ", ".join(f"{r} {int(counts[r])}" for r in order if counts[r])
    line = f"skipped {total} samples" + (f": {detail}" if detail else "")
    if replacements is not None:
        line += f"; {int(replacements)} replacements"
    return line


class SkipTally:
    """Bad samples of a training run: each distinct sample once, and the replacements apart.

    A bad sample is met again every epoch and by every item whose own sample was bad just before
    it (replacement walks to the next sample), so counting :class:`Skip` objects overstates how
    many samples are bad (41 replacements for 16 bad samples). ``distinct()`` counts each
    ``(reason, where)`` once; ``replacements`` counts every replacement.

    Args:
        read_counts: per reason, samples skipped while reading the files (each counted once).
    """

    def __init__(self, read_counts: Mapping[str, int] | None = None) -> None:
        self.read: Counter = Counter({k: int(v) for k, v in (read_counts or {}).items()})
        self.bad: set[tuple[str, str]] = set()
        self.replacements: Counter = Counter()

    def add(self, skips: Iterable[Skip]) -> None:
        for s in skips:
            self.bad.add((s.reason, s.where))
            self.replacements[s.reason] += 1

    def merge(self, other: SkipTally) -> SkipTally:
        out = SkipTally(self.read + other.read)
        out.bad = self.bad | other.bad
        out.replacements = self.replacements + other.replacements
        return out

    def distinct(self) -> Counter:
        """Distinct bad samples per reason (read-time skips included)."""
        total = Counter(self.read)
        total.update(reason for reason, _ in self.bad)
        return total

    def report(self) -> str:
        return skipped_report(self.distinct(), sum(self.replacements.values()))

    def to_state(self) -> dict[str, Any]:
        """JSON-able state (checkpoints, ``skipped.json``)."""
        return {
            "read": dict(self.read),
            "bad_samples": sorted([r, w] for r, w in self.bad),
            "replacements": dict(self.replacements),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> SkipTally:
        """Inverse of :meth:`to_state`; a plain ``{reason: count}`` (older checkpoints) becomes
        read-time counts, since the samples behind it are unknown."""
        state = dict(state or {})
        if "bad_samples" not in state:
            return cls({k: v for k, v in state.items() if isinstance(v, int)})
        out = cls(state.get("read"))
        out.bad = {(str(r), str(w)) for r, w in state["bad_samples"]}
        out.replacements = Counter({k: int(v) for k, v in state.get("replacements", {}).items()})
        return out


class EncodedItemCache:
    """Encoded dataset items by index, up to ``max_bytes`` of tensors (see
    :class:`SegmentationDataset`'s ``cache_bytes``). ``get`` returns a shallow copy: the caller may
    add or remove keys, while the tensors are shared and must not be written to (collation copies
    them into new batch tensors). Pixel tensors equal to one already kept (another question on the
    same image) are stored once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: dict[int, dict[str, Any]] = {}
        self._pixels: dict[tuple, torch.Tensor] = {}  # (shape, dtype, hash of the bytes) -> the tensor

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, float]:
        looked = self.hits + self.misses
        return {"items": len(self), "mib": round(self.bytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / looked, 4) if looked else 0.0}

    def get(self, index: int) -> dict[str, Any] | None:
        item = self._items.get(index)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        return dict(item)

    def put(self, index: int, item: dict[str, Any]) -> None:
        if self.bytes >= self.max_bytes:
            return
        item = dict(item)
        size = 0
        pixels = item.get("pixel_values")
        if isinstance(pixels, torch.Tensor):
            shared = self._shared_pixels(pixels)
            if shared is not None:
                item["pixel_values"] = shared
            else:
                size += pixels.nbytes
        for key, value in item.items():
            if key != "pixel_values":
                size += sum(v.nbytes for v in (value if isinstance(value, (list, tuple)) else [value])
                            if isinstance(v, torch.Tensor))
        self._items[index] = item
        self.bytes += size

    def _shared_pixels(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The kept tensor equal to ``pixels``, or None after keeping ``pixels`` itself."""
        digest = hashlib.blake2b(pixels.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16)
        key = (tuple(pixels.shape), pixels.dtype, digest.digest())
        kept = self._pixels.get(key)
        if kept is not None and torch.equal(kept, pixels):
            return kept
        if kept is None:
            self._pixels[key] = pixels
        return None


class SegmentationDataset(Dataset):
    """Samples of several sources, concatenated; item ``i`` encodes sample ``i`` (or a replacement).

    Item: ``encode(image, question, answer, masks)`` plus ``skips``: the :class:`Skip` of every
    bad sample replaced by the following ones (within the same source, wrapping around).
    ``MAX_RETRIES`` consecutive bad samples raise ``DataError`` instead of looping.

    Args:
        sources: the samples of each source (any reader).
        encode: called as ``encode(image, question, answer, masks)`` with a PIL RGB image and
            bool masks ``[K, H, W]``; pass ``processor.encode_example``.
        names: one label per source (error messages); default ``source0``, ``source1`` ...
        read_skips: counts per reason already skipped while reading (``muse_samples`` /
            ``vqa_samples``), kept in ``self.read_skips`` for the report.
        cache_bytes: keep encoded items in memory up to this many bytes of tensors (0 = off), so
            that an item drawn again is not decoded and tokenized again. Encoding is a function
            of the sample, so a cached item equals a fresh one; an image's pixel tensor is kept
            once for all of its questions. Items are added until the budget is reached; after
            that the cache is only read. With DataLoader workers each worker keeps its own.
    """

    def __init__(
        self,
        sources: Sequence[Sequence[Sample]],
        encode: EncodeFn,
        names: Sequence[str] = (),
        read_skips: Mapping[str, int] | None = None,
        cache_bytes: int = 0,
    ):
        self.sources = [list(s) for s in sources]
        self.names = list(names) or [f"source{i}" for i in range(len(self.sources))]
        if len(self.names) != len(self.sources):
            raise ConfigError(f"{len(self.names)} names for {len(self.sources)} sources")
        self.encode = encode
        self.read_skips = skip_counts(read_skips)
        empty = [n for n, s in zip(self.names, self.sources) if not s]
        if empty or not self.sources:
            raise ConfigError(f"training data set(s) {empty} have no usable samples")
        self.sizes = [len(s) for s in self.sources]
        self.offsets = np.cumsum([0, *self.sizes])
        self.cache = EncodedItemCache(cache_bytes) if cache_bytes > 0 else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, index within the source)`` of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        src = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return src, index - int(self.offsets[src])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if self.cache is None:
            return self._encode_item(index)
        item = self.cache.get(index)
        if item is None:
            item = self._encode_item(index)
            self.cache.put(index, item)
        return item

    def _encode_item(self, index: int) -> dict[str, Any]:
        src, local = self.locate(index)
        samples = self.sources[src]
        skips: list[Skip] = []
        for attempt in range(MAX_RETRIES):
            sample = samples[(local + attempt) % len(samples)]
            try:
                example = self.encode_sample(sample)
            except _Skip as skip:
                detail = str(skip).splitlines()[0] if str(skip) else ""
                skips.append(Skip(skip.reason, sample.where(), detail[:200]))
                continue
            example["skips"] = skips
            return example
        raise DataError(
            f"{MAX_RETRIES} consecutive bad samples in {self.names[src]} "
            f"(last: {skips[-1].where}: {skips[-1].reason})"
        )

    def encode_sample(self, sample: Sample) -> dict[str, Any]:
        """The encoding of one sample; raises ``_Skip`` when it is bad."""
        image, masks = self.load(sample)
        try:
            if sample.history:  # a packed conversation: every answer supervised
                example = self.encode(image, sample.question, sample.answer, masks, history=sample.history,
                                      supervise_history=True)
            else:
                example = self.encode(image, sample.question, sample.answer, masks)
        except (PixelLMError, ValueError) as err:
            raise _Skip("encode_error", str(err)) from err
        if not sample.supervise_masks:
            example["text_only"] = True
        return example

    @staticmethod
    def load(sample: Sample) -> tuple[Any, np.ndarray | None]:
        """``(PIL RGB image, masks [K, H, W])`` of a sample, checked (masks None for a text-only
        sample); raises ``_Skip``."""
        from pixellm.processing.image_processing import ImageNotFound, ImageTooLarge, load_image

        if not sample.image_path:
            raise _Skip("no_image", "record names no image")
        try:
            # the loader of predict / infer / serve: same pixel limit, modes and EXIF orientation
            image = load_image(sample.image_path)
        except ImageNotFound as err:
            raise _Skip("missing_image", f"{sample.image_path}: no such file") from err
        except ImageTooLarge as err:
            raise _Skip("image_too_large", str(err)) from err
        except Exception as err:  # PIL raises several types for corrupt files
            raise _Skip("unreadable_image", f"{sample.image_path}: {err}") from err
        if not sample.supervise_masks:
            return image, None
        try:
            masks = sample.load_masks()
        except FileNotFoundError as err:
            raise _Skip("missing_image", str(err)) from err
        except (PixelLMError, ValueError, KeyError, TypeError, OSError) as err:
            raise _Skip("bad_masks", str(err)) from err
        if masks.shape[1:] != (image.height, image.width):
            raise _Skip(
                "size_mismatch", f"image is {image.width}x{image.height}, masks {masks.shape[2]}x{masks.shape[1]}"
            )
        if sample.num_seg != masks.shape[0]:
            raise _Skip("seg_count", f"answer has {sample.num_seg} {{seg}} but {masks.shape[0]} targets")
        return image, masks
