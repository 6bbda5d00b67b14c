"""A short end-to-end run of the demo: files written, metrics JSON structure, CLI last line."""

from __future__ import annotations

import json

import pytest

from pixellm.train.demo import demo_config, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config(out, steps=2, seed=1)
    cfg.batch_size = cfg.effective_batch = 4
    cfg.val_every = 1
    metrics = run_demo(out, steps=2, seed=1, train_questions=24, val_questions=6, progress=False, config=cfg)
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


def test_demo_checkpoint_loads_in_the_predictor(demo_run):
    from PIL import Image

    from pixellm.infer.predictor import Predictor

    out, _ = demo_run
    predictor = Predictor.from_pretrained(out / "checkpoint")
    record = json.loads((out / "data" / "val.json").read_text())[0]
    image = Image.open(out / "data" / record["file_name"])
    result = predictor(image, record["questions"][0])
    assert result.masks.shape[1:] == (record["height"], record["width"])
    assert result.masks.shape[0] == result.answer.count("[SEG]")


def test_demo_cli_rejects_bad_steps(capsys):
    from pixellm.cli import main

    assert main(["demo", "--steps", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixellm demo: error: --steps must be >= 1, got 0"]
