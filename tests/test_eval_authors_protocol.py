"""``eval muse --protocol authors``: the authors' arithmetic on hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.cli import main
from pixellm.data.masks import encode_rle
from pixellm.eval.authors_protocol import evaluate_muse_authors

H, W = 4, 5


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def record(questions):
    """``questions``: list of GT mask lists."""
    return {"height": H, "width": W, "questions": [f"q{i}" for i in range(len(questions))],
            "answers": [[{"category_name": f"t{j}", "bbox": [0, 0, 1, 1], "segmentation": encode_rle(m)}
                         for j, m in enumerate(q)] for q in questions]}


def pred(image, question, masks, **extra):
    return {"image": image, "question": question, "answer": " ".join(["it [SEG]"] * len(masks)),
            "masks": [encode_rle(m) if isinstance(m, np.ndarray) and m.dtype == bool else m for m in masks],
            **extra}


def run(records, preds):
    return evaluate_muse_authors([(records, preds, "val")], details=True)


A = box(0, 2, 0, 2)  # 4 pixels
B = box(2, 4, 3, 5)  # 4 pixels, disjoint from A
E = np.zeros((H, W), bool)


def test_extra_prediction_scores_one_under_the_union_zero_rule():
    # G = 1, K = 2: the perfect prediction is matched (4 / (4 + 1e-5)); the extra one is unmatched,
    # compared as raw "logits" (none in [0.5, 1] for a binary mask) with an empty target: union 0 -> 1.
    m = run([record([[A]])], [pred(0, 0, [B, A])])
    expected = (4 / (4 + 1e-5) + 1.0) / max(2, 1)
    assert m["gIoU"] == pytest.approx(expected, abs=1e-12)
    assert m["cIoU"] == pytest.approx(4 / (4 + 1e-10))
    slots = m["generated"]["per_sample"][0]["slots"]
    assert slots == [[4, 4, pytest.approx(4 / (4 + 1e-5))], [0, 0, 1.0]]


def test_unmatched_prediction_with_logits_counts_its_band():
    logits = np.full((2, H, W), -8.0, dtype=np.float32)
    logits[0][A] = 6.0  # matched, binarised at 0
    logits[1][:, :3] = 0.7  # 12 pixels with raw logits in [0.5, 1]
    logits[1][3, 4] = 3.0  # a confident pixel, outside the band: ignored
    masks = logits > 0
    m = run([record([[A]])], [{"image": 0, "question": 0, "answer": "a [SEG] b [SEG]", "masks": masks,
                               "mask_logits": logits}])
    assert m["generated"]["per_sample"][0]["slots"][1] == [0, 12, 0.0]
    assert m["gIoU"] == pytest.approx((4 / (4 + 1e-5) + 0.0) / 2)
    assert m["cIoU"] == pytest.approx(4 / (4 + 12 + 1e-10))


def test_divisor_is_per_image_and_an_image_can_score_above_one():
    # q0: G=1, K=1 perfect -> ~1; q1: G=0, K=1 -> unmatched prediction, union 0 -> 1;
    # q2: one empty target, no prediction -> union 0 -> 1. Image: 3 / max(2, 2) = 1.5.
    m = run([record([[A], [], [E]])], [pred(0, 0, [A]), pred(0, 1, [B]), pred(0, 2, [])])
    assert m["gIoU"] == pytest.approx((4 / (4 + 1e-5) + 1 + 1) / 2)
    assert m["images_above_1"] == 1 and m["images"] == 1 and m["samples"] == 3


def test_images_are_weighted_by_their_divisor():
    # image 0: one question, G=2, K=0 -> 0 / 2; image 1: G=1, K=1 perfect -> ~1 / 1.
    # gIoU = (0 + ~1) / (2 + 1), not the plain image mean 0.5.
    m = run([record([[A, B]]), record([[B]])], [pred(1, 0, [B])])
    assert m["gIoU"] == pytest.approx((4 / (4 + 1e-5)) / 3)
    assert m["missing"] == 1


def test_rectangular_assignment_without_padding():
    # G=1, K=2. Prediction 0 covers A and more (5 px of 9 outside); prediction 1 is A minus a pixel.
    # Both protocols match the same here, but ours pads and pays the empty-mask costs; with no
    # padding the cheapest single pair wins.
    p0 = box(0, 3, 0, 3)
    p1 = A.copy()
    p1[0, 0] = False
    m = run([record([[A]])], [pred(0, 0, [p0, p1])])
    slots = m["generated"]["per_sample"][0]["slots"]
    assert slots[0][:2] == [3, 4]  # p1 matched: I = 3, U = 4
    assert slots[1] == [0, 0, 1.0]


def test_cli_option(tmp_path, capsys):
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps([record([[A]])]))
    pr = tmp_path / "pred.jsonl"
    pr.write_text(json.dumps(pred(0, 0, [B, A])) + "\n")
    out = tmp_path / "m.json"
    assert main(["eval", "muse", "--gt", str(gt), "--pred", str(pr), "--protocol", "authors",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["settings"]["protocol"] == "authors" and metrics["gIoU"] == pytest.approx(1.0, abs=1e-5)
    assert main(["eval", "muse", "--gt", str(gt), "--pred", str(pr), "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["gIoU"] == pytest.approx(0.5)  # ours: the extra mask scores 0
