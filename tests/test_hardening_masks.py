"""Compressed RLE whose run lengths do not cover the image (issue 12, row 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pixellm.data.masks import check_rle_counts, decode_rle, decode_segmentation, encode_rle, rle_run_lengths
from pixellm.data.muse import iter_questions, load_muse
from pixellm.errors import DataError
from pixellm.eval.predictions import load_predictions


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Reference run lengths straight from the pixels (COCO order: column-major, starting with 0s)."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("seed", range(6))
def test_run_lengths_match_the_pixels(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 300, size=2)
    mask = rng.random((h, w)) < rng.uniform(0.001, 0.999)
    if seed == 0:
        mask[:] = True  # a first run of 0 background pixels
    rle = encode_rle(mask)
    assert rle_run_lengths(rle["counts"]).tolist() == column_major_runs(mask)
    check_rle_counts(rle["counts"], int(h), int(w))


def small_rle_under_big_size() -> dict:
    """Counts of a 5x5 mask (a 25-pixel image) labelled with the size of a 60x80 image."""
    small = np.zeros((5, 5), bool)
    small[1:3, 1:4] = True
    return {"size": [60, 80], "counts": encode_rle(small)["counts"]}


def test_short_counts_are_an_error_not_uninitialised_memory():
    bad = small_rle_under_big_size()
    # today pycocotools fills the rest of the 60x80 buffer with whatever memory held
    with pytest.raises(DataError, match="sum to 25 pixels but size \\[60, 80\\] has 4800"):
        decode_rle(bad)
    with pytest.raises(DataError, match="sum to 25"):
        decode_segmentation(bad, 60, 80)


def test_truncated_counts_string_is_an_error():
    mask = np.zeros((60, 80), bool)
    mask[10:50, 5:70] = True
    counts = encode_rle(mask)["counts"]
    assert mask_utils.decode({"size": [60, 80], "counts": counts.encode()}).sum() == mask.sum()
    for cut in (len(counts) - 1, len(counts) // 2, 3):
        with pytest.raises(DataError, match="RLE"):
            decode_rle({"size": [60, 80], "counts": counts[:cut]})


def test_ground_truth_error_names_file_record_and_target(tmp_path):
    rec = {"file_name": "a.png", "height": 60, "width": 80, "questions": ["q"],
           "answers": [[{"category_name": "x", "segmentation": small_rle_under_big_size()}]]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([rec]))
    q = next(iter_questions(load_muse(path), source=str(path)))
    with pytest.raises(DataError) as err:
        q.target_masks()
    msg = str(err.value)
    assert msg.startswith(str(path)) and "question 0 target 0" in msg and "sum to 25" in msg
    assert "\n" not in msg


def test_prediction_error_names_file_and_line(tmp_path):
    records = [{"height": 60, "width": 80, "questions": ["q"], "answers": [[]]}]
    path = tmp_path / "pred.jsonl"
    path.write_text(json.dumps({"image": 0, "question": 0, "answer": "a [SEG]",
                                "masks": [small_rle_under_big_size()]}) + "\n")
    pred = load_predictions(str(path), records)[(0, 0, "generated")]
    with pytest.raises(DataError, match=f"{path}:line 1: masks\\[0\\]: RLE counts sum to 25"):
        pred.decode_masks(60, 80)
