"""Text details: refer2muse questions, eval warnings and JSON error positions (issue 12 rows 15-17)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.cli import main
from pixellm.data.masks import encode_rle
from pixellm.data.muse import read_json
from pixellm.data.prompts import multi_refer_question
from pixellm.errors import DataError
from pixellm.eval.predictions import load_predictions


def test_refer_questions_do_not_double_the_article():
    assert multi_refer_question(["the left person"]) == "Please segment the left person in the image."
    assert multi_refer_question(["The man", "red car"]) == "Please segment The man and red car in the image."
    assert multi_refer_question(["a dog on the left", "cat"]) == "Please segment a dog on the left and cat in the image."
    assert multi_refer_question(["left person", "the car"]) == "Please segment the left person and the car in the image."
    assert multi_refer_question(["theater seat"]) == "Please segment the theater seat in the image."


def gt_file(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:5] = True
    recs = [{"height": 6, "width": 8, "questions": ["q0", "q1", "q2"],
             "answers": [[{"category_name": "x", "segmentation": encode_rle(mask)}]] * 3}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(recs))
    return path, recs, mask


def test_eval_warns_about_questions_without_prediction(tmp_path, capsys):
    gt, _, mask = gt_file(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", "muse", "--gt", str(gt), "--pred", str(empty), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: 3 of 3 questions have no prediction" in err  # today: silent gIoU 0
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"image": 0, "question": 1, "answer": "x [SEG]", "masks": [encode_rle(mask)]}) + "\n")
    assert main(["eval", "muse", "--gt", str(gt), "--pred", str(one), "--quiet"]) == 0
    assert "warning: 2 of 3 questions have no prediction" in capsys.readouterr().err
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps({"image": 0, "question": q, "answer": "x [SEG]",
                                        "masks": [encode_rle(mask)]}) + "\n" for q in range(3)))
    assert main(["eval", "muse", "--gt", str(gt), "--pred", str(full), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_invalid_json_names_line_and_column(tmp_path):
    _, recs, _ = gt_file(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": 0, "question": 0, "answer": "x", "masks": []}\n{"image": 0, "question": 1,, }\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: not valid JSON \(Expecting .* at column 28\)"):
        load_predictions(str(bad), recs)
    gt = tmp_path / "gt_bad.json"
    gt.write_text('[\n {"height": 1,\n  "width": }\n]')
    with pytest.raises(DataError, match=r"gt_bad.json: not valid JSON \(.* at line 3 column 12\)"):
        read_json(gt)
