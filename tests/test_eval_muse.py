"""MUSE protocol: hand-computed cases for every rule, a loop reference on random masks, the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pixellm.cli import main
from pixellm.data.masks import encode_rle
from pixellm.eval import evaluate_muse, evaluate_muse_splits
from pixellm.eval.judges.base import Judge, JudgeItem
from pixellm.eval.matching import EPS
from pixellm.eval.muse_protocol import bucket_of
from pixellm.eval.rewrite import rewrite_answer, target_phrases

H, W = 4, 5


def box(y0: int, y1: int, x0: int, x1: int, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def record(targets_per_question: list[list[np.ndarray]], names=None, **extra) -> dict:
    """One image record; question q targets the given masks (descriptions "obj{q}{i}")."""
    h, w = targets_per_question[0][0].shape if targets_per_question and targets_per_question[0] else (H, W)
    answers = []
    for q, masks in enumerate(targets_per_question):
        answers.append(
            [
                {
                    "category_id": 1,
                    "category_name": "thing",
                    "rephrased_name": f"obj{q}{i}",
                    "segmentation": encode_rle(m),
                }
                for i, m in enumerate(masks)
            ]
        )
    rec = {"height": h, "width": w, "file_name": "x.jpg", "ann_list": [], "answers": answers}
    rec["questions"] = names or [f"question {q}?" for q in range(len(answers))]
    rec.update(extra)
    return rec


def pred(image: int, question: int, masks: list[np.ndarray], **extra) -> dict:
    answer = " ".join(f"thing {i} [SEG]" for i in range(len(masks))) + "."
    return {
        "image": image,
        "question": question,
        "answer": answer,
        "masks": [encode_rle(m) for m in masks],
        **extra,
    }


class FixedJudge(Judge):
    """Returns the same score for every prediction (to test the gate)."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        self.value = value
        self.items: list[JudgeItem] = []

    def score(self, item: JudgeItem) -> list[float]:
        self.items.append(item)
        return [self.value] * len(item.matched)


A = box(0, 2, 0, 2)  # 4 px
B = box(2, 4, 2, 5)  # 6 px


def test_more_predictions_than_gt():
    # GT {A}; predictions [3 px elsewhere, A]: A<->A (IoU 1), extra prediction unmatched: IoU 0, U = 3.
    extra = box(3, 4, 0, 3)
    m = evaluate_muse([record([[A]])], [pred(0, 0, [extra, A])])
    assert m["gIoU"] == pytest.approx((1 + 0) / 2)
    assert m["cIoU"] == pytest.approx(4 / (4 + 3))
    assert m["samples"] == 1 and m["missing"] == 0 and m["judge"] == "oracle"


def test_fewer_predictions_than_gt():
    # GT {A, B}; one prediction = A plus one pixel: I 4, U 5; B unmatched adds its 6 px to the unions.
    a_plus = A.copy()
    a_plus[0, 2] = True
    m = evaluate_muse([record([[A, B]])], [pred(0, 0, [a_plus])], details=True)
    assert m["gIoU"] == pytest.approx((4 / 5 + 0) / 2)
    assert m["cIoU"] == pytest.approx(4 / (5 + 6))
    sample = m["generated"]["per_sample"][0]
    assert sample["rewritten"] == "thing 0 (obj00)."
    assert sorted(p[:2] for p in sample["pairs"]) == [[0, 0], [1, None]]


def test_empty_both_scores_one_and_adds_nothing_to_ciou():
    recs = [record([[], [A]])]  # question 0: no target; question 1: A
    half = box(0, 1, 0, 2)  # 2 px inside A: IoU 0.5
    m = evaluate_muse(recs, [pred(0, 0, []), pred(0, 1, [half])])
    assert m["gIoU"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["cIoU"] == pytest.approx(2 / 4)
    # A no-target question with a spurious mask: IoU 0 and the mask's area joins the unions.
    m = evaluate_muse(recs, [pred(0, 0, [B]), pred(0, 1, [half])])
    assert m["gIoU"] == pytest.approx((0.0 + 0.5) / 2)
    assert m["cIoU"] == pytest.approx(2 / (6 + 4))


@pytest.mark.parametrize("score,passes", [(0.5, False), (0.5000001, True), (0.0, False), (1.0, True)])
def test_gate_is_strictly_above_half(score, passes):
    part = box(0, 1, 0, 2)  # I 2, U 4
    m = evaluate_muse([record([[A]])], [pred(0, 0, [part])], judge=FixedJudge(score))
    assert m["gIoU"] == pytest.approx(0.5 if passes else 0.0)
    assert m["cIoU"] == pytest.approx(0.5 if passes else 0.0)
    assert m["judge"] == "fixed"


def test_padding_scores_zero_whatever_the_judge_says():
    judge = FixedJudge(1.0)
    m = evaluate_muse([record([[]])], [pred(0, 0, [B])], judge=judge, details=True)
    assert m["generated"]["per_sample"][0]["scores"] == [0.0]
    assert m["gIoU"] == 0.0 and m["cIoU"] == 0.0
    assert judge.items[0].matched == [None] and judge.items[0].rewritten == "thing 0 (None)."


def test_missing_question_is_an_empty_answer_and_counted():
    recs = [record([[A], [B]])]
    m = evaluate_muse(recs, [pred(0, 0, [A])])
    assert m["samples"] == 2 and m["missing"] == 1
    assert m["gIoU"] == pytest.approx(0.5)
    assert m["cIoU"] == pytest.approx(4 / (4 + 6))


def test_teacher_forced_reported_separately():
    recs = [record([[A]])]
    m = evaluate_muse(recs, [pred(0, 0, []), pred(0, 0, [A], teacher_forced=True)])
    assert m["mode"] == "generated" and m["gIoU"] == 0.0
    assert m["teacher_forced"]["gIoU"] == 1.0 and m["generated"]["gIoU"] == 0.0
    only_tf = evaluate_muse(recs, [pred(0, 0, [A], teacher_forced=True)])
    assert only_tf["mode"] == "teacher_forced" and only_tf["gIoU"] == 1.0 and "generated" not in only_tf


def test_splits_and_buckets():
    val = [record([[A], [A, B]])]
    test_many = [record([[A, B, A, B, A, B]], split="test_many")]
    m = evaluate_muse_splits(
        [(val, [pred(0, 0, [A]), pred(0, 1, [A, B])], "val"), (test_many, [pred(0, 0, [])], None)]
    )
    gen = m["generated"]
    assert set(gen["splits"]) == {"val", "test_many"}
    assert gen["splits"]["val"]["gIoU"] == 1.0 and gen["splits"]["test_many"]["gIoU"] == 0.0
    assert {k: v["samples"] for k, v in gen["buckets"].items()} == {"1": 1, "2": 1, "6+": 1}
    assert [bucket_of(n) for n in (0, 1, 2, 3, 4, 5, 6, 34)] == ["0", "1", "2", "3", "4-5", "4-5", "6+", "6+"]
    assert m["samples"] == 3


def test_mask_scores_and_logits_steer_matching_not_ious():
    # Two copies of A: the one with the higher mask score has the lower BCE and wins the match.
    for scores, winner in (([0.3, 0.9], 1), ([0.9, 0.3], 0)):
        m = evaluate_muse([record([[A]])], [pred(0, 0, [A, A], mask_scores=scores)], details=True)
        pairs = m["generated"]["per_sample"][0]["pairs"]
        assert [p[:2] for p in pairs if p[0] == 0] == [[0, winner]]
        assert m["gIoU"] == pytest.approx(0.5)
    # In-memory logits: confident logits for the masks in swapped order still match them right.
    logits = np.stack([np.where(B, 4.0, -4.0), np.where(A, 4.0, -4.0)])
    item = {**pred(0, 0, [B, A]), "masks": np.stack([B, A]), "mask_logits": logits}
    m = evaluate_muse([record([[A, B]])], [item], details=True)
    assert m["gIoU"] == 1.0 and m["cIoU"] == 1.0
    assert sorted(p[:2] for p in m["generated"]["per_sample"][0]["pairs"]) == [[0, 1], [1, 0]]


def test_rewrite_and_phrases():
    answer = "You can lie on the large bed [SEG] covered with soft quilts [SEG]. Then take the silver laptop [SEG]."
    assert rewrite_answer(answer, ["A bed", None, "A laptop"]) == (
        "You can lie on the large bed (A bed) covered with soft quilts (None). Then take the silver laptop (A laptop)."
    )
    assert target_phrases(answer) == ["large bed", "covered with soft quilts", "silver laptop"]
    assert target_phrases("the red circle is [SEG] and the cat [SEG]") == ["red circle", "cat"]
    with pytest.raises(ValueError, match="2 .SEG. markers but 1"):
        rewrite_answer("a [SEG] b [SEG]", ["x"])


# ---- equality with a straightforward reference on random masks ---------------------------------


def ref_sample(gt: list[np.ndarray], pr: list[np.ndarray]) -> tuple[float, int, int]:
    """Brute force over all permutations with per-pixel costs; oracle judge; (IoU, sum I, sum U)."""
    p = max(len(gt), len(pr))
    if p == 0:
        return 1.0, 0, 0
    shape = (gt or pr)[0].shape
    empty = np.zeros(shape, dtype=bool)
    gts = gt + [empty] * (p - len(gt))
    prs = pr + [empty] * (p - len(pr))

    def cost(t, m):
        q = np.where(m, 1 - EPS, EPS).ravel()
        t = t.ravel().astype(float)
        bce = -np.mean(t * np.log(q) + (1 - t) * np.log(1 - q))
        return bce + 1 - (2 * (t * q).sum() + 1) / (q.sum() + t.sum() + 1)

    c = [[cost(gts[i], prs[j]) for j in range(p)] for i in range(p)]
    best = min(itertools.permutations(range(p)), key=lambda s: sum(c[i][s[i]] for i in range(p)))
    ious, inter_sum, union_sum = [], 0, 0
    for i, j in enumerate(best):
        real = i < len(gt) and j < len(pr)
        inter = int((gts[i] & prs[j]).sum())
        union = int((gts[i] | prs[j]).sum())
        gated = inter if real else 0
        ious.append(gated / union if union else (1.0 if real else 0.0))
        inter_sum, union_sum = inter_sum + gated, union_sum + union
    return sum(ious) / p, inter_sum, union_sum


def test_equals_loop_reference_on_random_masks():
    rng = np.random.default_rng(7)
    shape = (9, 11)
    questions, preds, refs = [], [], []
    for q in range(12):
        g, k = rng.integers(0, 5), rng.integers(0, 5)
        gt = [rng.random(shape) < rng.uniform(0.1, 0.6) for _ in range(g)]
        pr = [rng.random(shape) < rng.uniform(0.1, 0.6) for _ in range(k)]
        questions.append(gt)
        preds.append(pred(0, q, pr))
        refs.append(ref_sample(gt, pr))
    rec = record(questions)
    rec["height"], rec["width"] = shape
    m = evaluate_muse([rec], preds, details=True)
    got = m["generated"]["per_sample"]
    for s, (iou, inter, union) in zip(got, refs):
        assert s["iou"] == pytest.approx(iou, abs=1e-12)
        assert (s["intersection"], s["union"]) == (inter, union)
    assert m["gIoU"] == pytest.approx(np.mean([r[0] for r in refs]), abs=1e-12)
    assert m["cIoU"] == pytest.approx(sum(r[1] for r in refs) / sum(r[2] for r in refs), abs=1e-12)
    # Determinism: a second run gives identical results.
    assert evaluate_muse([rec], preds, details=True) == m


# ---- files and CLI --------------------------------------------------------------------------------


def test_cli_writes_metrics_and_prints_table(tmp_path, capsys):
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps([record([[A], [A, B]])]))
    pred_path = tmp_path / "pred.jsonl"
    lines = [pred(0, 0, [A]), pred(0, 1, [B]), pred(0, 1, [A, B], teacher_forced=True)]
    pred_path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "m" / "metrics.json"
    rc = main(["eval", "muse", "--gt", str(gt), "--pred", str(pred_path), "--out", str(out), "--quiet"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["gIoU"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["cIoU"] == pytest.approx((4 + 6) / (4 + 4 + 6))
    # Teacher-forced: only question 1 has a line; question 0 counts as missing (IoU 0).
    assert metrics["teacher_forced"]["gIoU"] == 0.5 and metrics["teacher_forced"]["missing"] == 1
    assert metrics["samples"] == 2 and metrics["missing"] == 0
    assert set(metrics["generated"]["splits"]) == {"val"}
    printed = capsys.readouterr().out
    assert "split val" in printed and "teacher_forced" in printed
    assert (
        printed.strip().splitlines()[-1]
        == f"generated judge=oracle: gIoU={metrics['gIoU']:.4f} cIoU={metrics['cIoU']:.4f}"
    )


def test_cli_bad_line_is_one_line_error(tmp_path, capsys):
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps([record([[A]])]))
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text(json.dumps(pred(0, 0, [A])) + "\n{not json\n")
    rc = main(["eval", "muse", "--gt", str(gt), "--pred", str(pred_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "pred.jsonl:line 2" in err and "not valid JSON" in err
    assert main(["eval", "muse", "--gt", str(gt), "--gt", str(gt), "--pred", str(pred_path)]) == 1
