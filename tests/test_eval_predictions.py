"""Prediction file validation: every malformed line is a DataError naming its line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.data.masks import encode_rle
from pixellm.errors import DataError
from pixellm.eval.predictions import load_predictions

H, W = 3, 4
MASK = np.eye(H, W, dtype=bool)
RECORDS = [{"height": H, "width": W, "questions": ["q0", "q1"], "answers": [[], []]}]


def line(**over) -> dict:
    obj = {"image": 0, "question": 1, "answer": "the thing [SEG].", "masks": [encode_rle(MASK)]}
    obj.update(over)
    return obj


def write(tmp_path, objs) -> str:
    path = tmp_path / "pred.jsonl"
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return str(path)


def test_valid_file_with_blank_lines(tmp_path):
    path = write(tmp_path, [line(), "", line(question=0, answer="none", masks=[], teacher_forced=True)])
    preds = load_predictions(path, RECORDS)
    assert set(preds) == {(0, 1, "generated"), (0, 0, "teacher_forced")}
    p = preds[(0, 1, "generated")]
    assert p.line == 1 and p.num_masks == 1
    np.testing.assert_array_equal(p.decode_masks(H, W)[0], MASK)
    assert preds[(0, 0, "teacher_forced")].line == 3


BAD = [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (line(image=1), "'image' 1 is not an image index"),
    (line(image="0"), "'image' '0' is not an image index"),
    (line(question=2), "'question' 2 does not exist in image 0"),
    (line(answer="no marker"), "1 masks but 0 [SEG] markers"),
    (line(answer="[SEG] and [SEG]"), "1 masks but 2 [SEG] markers"),
    (
        line(masks=[{"size": [W, H], "counts": encode_rle(MASK)["counts"]}]),
        "masks[0] has size [4, 3], image 0 is [3, 4]",
    ),
    (line(masks=[{"counts": "x"}]), "masks[0] is not an RLE dict"),
    (line(masks="rle"), "'masks' must be a list"),
    (line(mask_scores=[0.5, 0.5]), "'mask_scores' must be a list of 1 numbers"),
    (line(mask_scores=[1.5]), "'mask_scores' must be probabilities in [0, 1]"),
    (line(teacher_forced="yes"), "'teacher_forced' must be true or false"),
    ({"image": 0, "question": 0, "masks": []}, "missing field 'answer'"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_line_names_line_number(tmp_path, bad, message):
    path = write(tmp_path, [line(question=0), bad])
    with pytest.raises(DataError) as err:
        load_predictions(path, RECORDS)
    assert f"pred.jsonl:line 2: {message}" in str(err.value)
    assert "\n" not in str(err.value)


def test_duplicate_line(tmp_path):
    with pytest.raises(DataError, match=r"line 2: duplicate generated prediction .* \(first on line 1\)"):
        load_predictions(write(tmp_path, [line(), line()]), RECORDS)


def test_corrupt_rle_fails_at_decode_naming_line(tmp_path):
    path = write(tmp_path, [line(masks=[{"size": [H, W], "counts": "!!!!garbage"}])])
    pred = load_predictions(path, RECORDS)[(0, 1, "generated")]
    with pytest.raises(DataError, match=r"pred.jsonl:line 1: masks\[0\]"):
        pred.decode_masks(H, W)


def test_in_memory_predictions_and_arrays():
    preds = load_predictions([line(masks=MASK[None])], RECORDS)
    assert preds[(0, 1, "generated")].decode_masks(H, W).shape == (1, H, W)
    with pytest.raises(DataError, match=r"<predictions>:line 1: masks array has shape \(1, 4, 3\)"):
        load_predictions([line(masks=np.zeros((1, W, H), dtype=bool))], RECORDS)
