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
    """Decode a COCO compressed RLE dict (``counts`` as ``str`` or ``bytes``) to a bool mask."""
    try:
        counts = rle["counts"]
        size = [int(s) for s in rle["size"]]
        obj = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        return mask_utils.decode(obj).astype(bool)
    except Exception as err:
        raise DataError(f"invalid RLE ({err})") from err
