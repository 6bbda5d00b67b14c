"""``pixellm predict`` and ``pixellm infer`` on a saved tiny scripted model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm.cli import main
from pixellm.data.masks import decode_rle
from pixellm.testing import save_random_predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_random_predictor(d, answer=" the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    return d


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_prints_answer_and_writes_files(model_dir, image, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_dir), "--image", str(image), "--question", "Where can I sit?",
            "--max-new-tokens", "22", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "the chair [SEG] and this [SEG] and this"
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["answer"].count("[SEG]") == len(pred["masks"]) == 2
    assert pred["targets"][0] == "chair"
    assert all(decode_rle(m).shape == (50, 80) for m in pred["masks"])
    overlay = Image.open(out / "overlay.png")
    assert overlay.width == 80 and overlay.height > 50  # image + legend
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["masks"] == pred["masks"]


def test_predict_bad_image_is_one_line_error(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code = main(["predict", "--model", str(model_dir), "--image", str(bad), "--question", "q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "bad.jpg" in err[0]


def test_infer_command_writes_jsonl(model_dir, image, tmp_path, capsys):
    gt = [{"file_name": image.name, "height": 50, "width": 80, "ann_list": [],
           "questions": ["Where can I sit?", "What is there?"], "answers": [[], []]}]
    gt_path = image.parent / "gt.json"
    gt_path.write_text(json.dumps(gt))
    out = tmp_path / "pred.jsonl"
    args = ["infer", "--model", str(model_dir), "--data", f"muse:{gt_path}", "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "12", "--device", "cpu"]
    assert main(args) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["image"], x["question"]) for x in lines] == [(0, 0), (0, 1)]
    assert all(len(x["masks"]) == x["answer"].count("[SEG]") == 1 for x in lines)
    assert "2 written" in capsys.readouterr().out
    assert main(args) == 0 and "0 written, 2 already there" in capsys.readouterr().out
    assert main([*args[:3], "--data", "bogus:x", "--out", str(out)]) == 1
    assert "unknown data spec" in capsys.readouterr().err
