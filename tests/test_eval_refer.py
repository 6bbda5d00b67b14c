"""Ordered referring metrics: hand-computed I/U, empty-vs-empty, N-acc / T-acc, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.cli import main
from pixellm.data.masks import encode_rle
from pixellm.eval import evaluate_refer
from pixellm.eval.refer_metrics import ordered_pairs

H, W = 4, 5


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


A, B = box(0, 2, 0, 2), box(2, 4, 2, 5)  # 4 px, 6 px
EMPTY = np.zeros((H, W), dtype=bool)


def record(questions: list[list[np.ndarray]]) -> dict:
    answers = [[{"category_name": "x", "segmentation": encode_rle(m)} for m in ms] for ms in questions]
    return {
        "height": H,
        "width": W,
        "questions": [f"q{i}" for i in range(len(questions))],
        "answers": answers,
    }


def pred(q: int, masks: list[np.ndarray], **extra) -> dict:
    return {
        "image": 0,
        "question": q,
        "answer": " ".join(["[SEG]"] * len(masks)),
        "masks": [encode_rle(m) for m in masks],
        **extra,
    }


def test_order_matters_unlike_muse():
    # Targets [A, B], predictions [B, A]: every slot is disjoint -> IoU 0 (the MUSE protocol would give 1).
    m = evaluate_refer([record([[A, B]])], [pred(0, [B, A])])
    assert m["gIoU"] == 0.0 and m["cIoU"] == 0.0
    m = evaluate_refer([record([[A, B]])], [pred(0, [A, B])])
    assert m["gIoU"] == 1.0 and m["cIoU"] == 1.0 and m["masks"] == 2


def test_hand_computed_slots():
    half = box(0, 1, 0, 2)  # 2 px inside A
    recs = [record([[A, B], [A], [EMPTY]])]
    # q0: [half] vs [A, B] -> slot IoUs 2/4 and 0/6; q1: [A, B] vs [A] -> 1 and 0/6 (extra mask);
    # q2: empty target vs empty prediction -> 1 (the +1 for empty-vs-empty), union 0.
    m = evaluate_refer(recs, [pred(0, [half]), pred(1, [A, B]), pred(2, [EMPTY])])
    assert m["masks"] == 5
    assert m["gIoU"] == pytest.approx((0.5 + 0 + 1 + 0 + 1) / 5)
    assert m["cIoU"] == pytest.approx((2 + 4) / (4 + 6 + 4 + 6))
    inter, union = ordered_pairs(np.stack([A, B]), np.stack([half]))
    assert inter.tolist() == [2, 0] and union.tolist() == [4, 6]


def test_no_target_accuracy():
    recs = [record([[], [], [A], [B]])]
    preds = [pred(0, []), pred(1, [B]), pred(2, [A]), pred(3, [EMPTY])]
    m = evaluate_refer(recs, preds)
    assert m["N-acc"] == pytest.approx(1 / 2)  # q0 right (empty), q1 wrong
    assert m["T-acc"] == pytest.approx(1 / 2)  # q2 right, q3 predicted empty
    assert m["no_target_samples"] == 2
    # Slots: q0 IoU 1, q1 IoU 0 (U 6), q2 IoU 1 (U 4), q3 IoU 0 (U 6).
    assert m["gIoU"] == pytest.approx(0.5)
    assert m["cIoU"] == pytest.approx(4 / (6 + 4 + 6))


def test_missing_and_teacher_forced(tmp_path, capsys):
    gt = tmp_path / "refcoco_val.json"
    gt.write_text(json.dumps([record([[A], [B]])]))
    path = tmp_path / "pred.jsonl"
    path.write_text(
        "\n".join(json.dumps(x) for x in [pred(0, [A]), pred(1, [B], teacher_forced=True)]) + "\n"
    )
    out = tmp_path / "metrics.json"
    assert main(["eval", "refer", "--gt", str(gt), "--pred", str(path), "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["missing"] == 1 and m["gIoU"] == 0.5 and m["cIoU"] == pytest.approx(4 / 10)
    assert m["teacher_forced"]["missing"] == 1 and m["teacher_forced"]["gIoU"] == 0.5
    assert m["N-acc"] is None and m["T-acc"] == 0.5
    assert set(m["generated"]["splits"]) == {"refcoco_val"}
    assert "N-acc" in capsys.readouterr().out
