"""Mask encoding and decoding: COCO polygons and RLE through ``pycocotools``.

All masks leave this module as ``numpy`` bool arrays of shape ``H x W``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pixellm.errors import DataError


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` field (polygon list, uncompressed or compressed RLE).

    Returns an ``H x W`` bool array. Raises ``DataError`` (without a location; callers add
    the file and record) when the field is not a valid polygon or RLE for this image size.
    """
    try:
        if isinstance(segmentation, list):
            polys = [list(map(float, p)) for p in segmentation]
            if not polys:
                return np.zeros((height, width), dtype=bool)
            for p in polys:
                if len(p) < 6 or len(p) % 2:
                    raise DataError(f"polygon with {len(p)} coordinates (need an even number >= 6)")
            rles = mask_utils.frPyObjects(polys, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            size = [int(s) for s in segmentation["size"]]
            if size != [height, width]:
                raise DataError(f"RLE size {size} does not match image size {[height, width]}")
            counts = segmentation["counts"]
            if isinstance(counts, list):
                if sum(int(c) for c in counts) != height * width:
                    raise DataError("uncompressed RLE counts do not sum to height*width")
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
                check_rle_counts(rle["counts"], height, width)
        else:
            raise DataError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
        return mask_utils.decode(rle).astype(bool)
    except DataError:
        raise
    except Exception as err:  # pycocotools raises bare exceptions on corrupt input
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


def check_rle_counts(counts: str | bytes, height: int, width: int) -> None:
    """Raise ``DataError`` unless the run lengths are non-negative and sum to ``height * width``.

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
