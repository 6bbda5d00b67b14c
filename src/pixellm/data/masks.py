"""Mask encoding and decoding: COCO polygons and RLE through ``pycocotools``.

All masks leave this module as ``numpy`` bool arrays of shape ``H x W``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pixellm.errors import DataError


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO ``segmentation`` field (polygon list, uncompressed or compressed RLE) as a checked
    pycocotools RLE dict (``bytes`` counts), without decoding any pixels.

    Raises ``DataError`` (without a location; callers add the file and record) when the field
    is not a valid polygon or RLE for this image size.
    """
    try:
        if isinstance(segmentation, list):
            polys = [list(map(float, p)) for p in segmentation]
            if not polys:  # no polygon: an empty mask
                return mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
            for p in polys:
                if len(p) < 6 or len(p) % 2:
                    raise DataError(f"polygon with {len(p)} coordinates (need an even number >= 6)")
            return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            size = [int(s) for s in segmentation["size"]]
            if size != [height, width]:
                raise DataError(f"RLE size {size} does not match image size {[height, width]}")
            counts = segmentation["counts"]
            if isinstance(counts, list):
                runs = [int(c) for c in counts]
                if sum(runs) != height * width or (runs and min(runs) < 0):
                    raise DataError("uncompressed RLE counts must be >= 0 and sum to height*width")
                return mask_utils.frPyObjects(segmentation, height, width)
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
            check_rle_counts(rle["counts"], height, width)
            return rle
        raise DataError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
    except DataError:
        raise
    except Exception as err:  # pycocotools raises bare exceptions on corrupt input
        raise DataError(f"invalid segmentation ({err})") from err


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` field (polygon list, uncompressed or compressed RLE).

    Returns an ``H x W`` bool array; ``DataError`` as :func:`segmentation_rle`.
    """
    rle = segmentation_rle(segmentation, height, width)
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as err:
        raise DataError(f"invalid segmentation ({err})") from err


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``H x W`` bool mask as COCO compressed RLE with a ``str`` ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO compressed RLE dict (``counts`` as ``str`` or ``bytes``) to a bool mask.

    The run lengths are checked first (:func:`check_rle_counts`), so a truncated string or one
    written for another size is a ``DataError``, never a mask read from uninitialised memory.
    """
    try:
        counts = rle["counts"]
        size = [int(s) for s in rle["size"]]
        obj = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    except Exception as err:
        raise DataError(f"invalid RLE ({err})") from err
    check_rle_counts(obj["counts"], size[0], size[1])
    try:
        return mask_utils.decode(obj).astype(bool)
    except Exception as err:
        raise DataError(f"invalid RLE ({err})") from err


_MAX_RUN_CHARS = 7  # 7 x 5 bits covers any 32-bit run length; longer is corrupt


def rle_run_lengths(counts: str | bytes) -> np.ndarray:
    """The run lengths (int64) coded in a COCO compressed RLE ``counts`` string, vectorised.

    Follows pycocotools' ``rleFrString``: each number is 5-bit groups (``char - 48``; bit 0x20 =
    more groups follow, bit 0x10 of the last group = negative), and from the fourth number on
    each is a difference to the number two places before. Raises ``DataError`` for characters
    outside the code or a string that ends inside a number (truncated).
    """
    raw = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise DataError("invalid RLE (a character outside the compressed-RLE code)")
    ends = (c & 0x20) == 0
    if not ends[-1]:
        raise DataError("invalid RLE (counts string is truncated inside a number)")
    end_idx = np.flatnonzero(ends)
    starts = np.concatenate(([0], end_idx[:-1] + 1))
    lengths = end_idx - starts + 1
    if lengths.max() > _MAX_RUN_CHARS:
        raise DataError("invalid RLE (a run length longer than 32 bits)")
    pos = np.arange(len(c)) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    negative = (c[end_idx] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * lengths)), x)
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # odd chain: r[3] = x[3] + r[1], ...
    if len(x) > 2:
        runs[2::2] = np.cumsum(x[2::2])  # even chain from index 2: r[4] = x[4] + r[2], ...
    return runs


def check_rle_counts(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """The run lengths of ``counts``; ``DataError`` unless they are non-negative and sum to
    ``height * width``.

    pycocotools decodes whatever the string says into an ``H x W`` buffer: runs that sum to
    less leave the rest uninitialised (random areas from one decode to the next), runs that sum
    to more write past it. Checking the sum first makes both a clear error.
    """
    runs = rle_run_lengths(counts)
    if runs.size and runs.min() < 0:
        raise DataError("invalid RLE (a negative run length)")
    total = int(runs.sum())
    if total != height * width:
        raise DataError(
            f"RLE counts sum to {total} pixels but size {[height, width]} has {height * width} "
            "(truncated, or written for another size)"
        )
    return runs


# -- exact pair statistics straight from run lengths (no pixels decoded) ----------------------------


def run_pair_counts(a_runs: list[np.ndarray], b_runs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``(intersections [A, B], areas [A], areas [B])`` of two lists of masks given as
    run lengths of the same image (:func:`rle_run_lengths`; background first, column-major).

    Why: decoding 480x640 masks and multiplying them costs milliseconds per question; runs
    are a few hundred numbers. With ``F_a(x)`` = foreground pixels of mask a before flat index x
    (exact integers, from a ``searchsorted`` over a's run boundaries), the intersection of a
    and b is the sum of ``F_a(end) - F_a(start)`` over b's foreground runs.
    """
    a_area = np.array([int(r[1::2].sum()) for r in a_runs], dtype=np.int64)
    b_area = np.array([int(r[1::2].sum()) for r in b_runs], dtype=np.int64)
    inter = np.zeros((len(a_runs), len(b_runs)), dtype=np.int64)
    if not a_runs or not b_runs:
        return inter, a_area, b_area
    starts, ends, owner = [], [], []
    for j, r in enumerate(b_runs):
        bounds = np.concatenate(([0], np.cumsum(r)))
        m = len(r)
        s, e = bounds[1:m:2], bounds[2 : m + 1 : 2]
        starts.append(s)
        ends.append(e)
        owner.append(np.full(len(s), j))
    s, e, who = np.concatenate(starts), np.concatenate(ends), np.concatenate(owner)
    for i, r in enumerate(a_runs):
        if not a_area[i] or not len(s):
            continue
        bounds = np.concatenate(([0], np.cumsum(r)))
        fg = np.concatenate(([0], np.cumsum(np.where(np.arange(len(r)) % 2 == 1, r, 0))))
        covered = _covered(bounds, fg, e) - _covered(bounds, fg, s)
        inter[i] = np.bincount(who, weights=covered, minlength=len(b_runs)).round().astype(np.int64)
    return inter, a_area, b_area


def _covered(bounds: np.ndarray, fg: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Foreground pixels before flat index ``x`` for a mask with run boundaries ``bounds``."""
    i = np.clip(np.searchsorted(bounds, x, side="right") - 1, 0, len(bounds) - 2)
    return fg[i] + np.where(i % 2 == 1, x - bounds[i], 0)
