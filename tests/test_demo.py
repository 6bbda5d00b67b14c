"""A short end-to-end run of the demo: files written, metrics JSON structure, CLI last line."""

from __future__ import annotations

import json

import pytest

from pixellm.demo import demo_config, run_demo
from pixellm.train.vision_pretrain import VisionPretrainConfig

STAGE1 = VisionPretrainConfig(steps=3, batch_size=4)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config(out, steps=2, seed=1)
    cfg.batch_size = cfg.effective_batch = 4
    cfg.val_every = 1
    # stage 1 hands its features over for fp32 runs (under bf16 autocast the cache's keys differ)
    cfg.precision = "fp32"
    metrics = run_demo(out, steps=2, seed=1, train_questions=24, val_questions=6, progress=False, config=cfg,
                       vision=STAGE1)
    return out, metrics


def test_demo_writes_metrics_report_examples_and_checkpoint(demo_run):
    out, metrics = demo_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["gIoU"] == metrics["gIoU"]
    assert saved["samples"] == 6 and saved["judge"] == "oracle"
    for mode in ("generated", "teacher_forced"):
        assert saved[mode]["samples"] == 6
        assert 0.0 <= saved[mode]["gIoU"] <= 1.0 and 0.0 <= saved[mode]["cIoU"] <= 1.0
        assert "per_sample" not in saved[mode]
    kinds = saved["per_kind"]
    assert sum(k["generated"]["samples"] for k in kinds.values()) == 6
    assert saved["training"]["steps"] == 2 and saved["training"]["samples"] == 8
    assert saved["training"]["validation"] and saved["training"]["samples_per_second"] > 0
    report = (out / "report.md").read_text()
    assert "| generated |" in report and "teacher-forced" in report
    examples = sorted((out / "examples").glob("*.png"))
    assert len(examples) == 6 and all(f"examples/{p.name}" in report for p in examples)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 12 and sum(json.loads(x).get("teacher_forced", False) for x in lines) == 6
    # stage 1 ran, stage 2 started from its tower, every stage was timed
    assert saved["vision_pretraining"]["config"]["steps"] == 3
    assert (out / "vision_tower" / "config.json").is_file()
    assert saved["training"]["config"]["vision_weights"] == str(out / "vision_tower")
    # stage 2 read stage 1's features of the training images: it ran the tower on held-out ones only
    cache = saved["training"]["vision_cache"]
    assert cache["misses"] <= saved["samples"] and cache["hits"] >= saved["training"]["samples"]
    probe = saved["vision_pretraining"]["shape_probe"]
    assert probe["random_tower"] is None and 0.0 <= probe["pretrained_tower"] <= 1.0  # the demo skips the baseline
    assert "majority class" in report
    assert set(saved["seconds_per_stage"]) == {"data", "vision_pretraining", "training", "inference_and_evaluation"}
    assert saved["training"]["precision"]["chosen"] in ("fp32", "bf16") and saved["training"]["precision"]["reason"]
    records = json.loads((out / "data" / "val.json").read_text())
    empty = sum(1 for r in records for a in r["answers"] if not a)
    assert saved["no_target"]["questions"] == empty
    assert 0 <= saved["no_target"]["answered_right"] <= empty
    assert "No-target questions answered with no target" in report
    assert "answer word for word" in report
    assert all("exact_answer" in k["generated"] for k in kinds.values())


def test_demo_rerun_reuses_data_and_stage1(demo_run):
    out, metrics = demo_run
    tower = (out / "vision_tower" / "model.safetensors").read_bytes()
    data = (out / "data" / "train.json").stat().st_mtime_ns
    cfg = demo_config(out, steps=1, seed=1)
    cfg.batch_size = cfg.effective_batch = 4
    cfg.output_dir = str(out / "run2")
    again = run_demo(out, steps=1, seed=1, train_questions=24, val_questions=6, progress=False, config=cfg,
                     vision=STAGE1)
    assert again["vision_pretraining"]["reused"] is True
    # nothing handed over from a reused stage 1: stage 2 ran the tower on its training images too
    assert again["training"]["vision_cache"]["misses"] > metrics["training"]["vision_cache"]["misses"]
    assert (out / "vision_tower" / "model.safetensors").read_bytes() == tower
    assert (out / "data" / "train.json").stat().st_mtime_ns == data


def test_demo_checkpoint_loads_in_the_predictor(demo_run):
    from PIL import Image

    from pixellm.infer.predictor import Predictor

    out, _ = demo_run
    predictor = Predictor.from_pretrained(out / "checkpoint")
    record = json.loads((out / "data" / "val.json").read_text())[0]
    image = Image.open(out / "data" / record["file_name"])
    result = predictor(image, record["questions"][0])
    # trained without the instruction suffix (demo_config), so asked without it
    assert predictor.processor.instruction is False and result.question == record["questions"][0].strip()
    assert result.masks.shape[1:] == (record["height"], record["width"])
    assert result.masks.shape[0] == result.answer.count("[SEG]")


def test_demo_cli_rejects_bad_steps(capsys):
    from pixellm.cli import main

    assert main(["demo", "--steps", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixellm demo: error: --steps must be >= 1, got 0"]


def test_demo_cli_rejects_bad_train_questions(capsys):
    from pixellm.cli import main

    assert main(["demo", "--train-questions", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixellm demo: error: --train-questions must be >= 2, got 1"]
    assert main(["demo", "--val-questions", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixellm demo: error: --val-questions must be >= 2, got 0"]


def test_demo_cli_passes_train_questions(monkeypatch, capsys):
    import pixellm.demo
    from pixellm.cli import main

    seen = {}

    def fake_run_demo(out, **kw):
        seen.update(kw)
        return {"gIoU": 0.5, "cIoU": 0.25, "teacher_forced": {}}

    monkeypatch.setattr(pixellm.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--steps", "3", "--train-questions", "40", "--no-progress"]) == 0
    assert seen["train_questions"] == 40 and seen["steps"] == 3
    assert seen["val_questions"] == pixellm.demo.VAL_QUESTIONS == 1000
    assert main(["demo", "--val-questions", "50", "--no-progress"]) == 0
    assert seen["val_questions"] == 50
    assert capsys.readouterr().out.strip().splitlines()[-1] == "gIoU=0.5000 cIoU=0.2500"


def test_per_kind_tells_wrong_names_from_wrong_masks():
    from pixellm.demo import _reference_answers, per_kind

    records = [{"questions": ["q0", "q1"], "question_kinds": ["refer", "position"],
                "text_answers": ["The red circle {seg}.", "The blue square {seg}."]}]
    rows = [  # the refer answer is right word for word, the position answer names the wrong shape
        {"image": 0, "question": 0, "iou": 0.9, "intersection": 9, "union": 10, "gt": 1, "pred": 1,
         "answer": "The red circle [SEG]."},
        {"image": 0, "question": 1, "iou": 0.0, "intersection": 0, "union": 10, "gt": 1, "pred": 1,
         "answer": "The  red circle [SEG]."},
    ]
    metrics = {"generated": {"per_sample": rows}}
    out = per_kind(metrics, {(0, 0): "refer", (0, 1): "position"}, _reference_answers(records))
    assert out["refer"]["generated"]["exact_answer"] == 1.0
    assert out["position"]["generated"]["exact_answer"] == 0.0
    assert out["position"]["generated"]["exact_target_count"] == 1.0
    assert "per_sample" not in metrics["generated"]
    # without reference texts (MUSE data has none) the column is left out, not guessed
    rows_again = [dict(r) for r in rows]
    bare = per_kind({"generated": {"per_sample": rows_again}}, {(0, 0): "refer", (0, 1): "position"})
    assert "exact_answer" not in bare["refer"]["generated"]
