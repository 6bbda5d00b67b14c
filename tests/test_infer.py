"""Split inference (PRED.jsonl, batching, resume, teacher forcing) and overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm.errors import ConfigError, DataError
from pixellm.eval.predictions import load_predictions
from pixellm.infer.generation import GenerationOptions
from pixellm.infer.overlay import answer_html, colour, render_overlay, target_names
from pixellm.infer.predictor import Predictor
from pixellm.infer.split_inference import parse_data_spec, read_done, run_inference
from pixellm.testing import scripted_pixellm


@pytest.fixture(scope="module")
def predictor():
    from pixellm.build import tiny_processor

    proc = tiny_processor()
    model = scripted_pixellm(proc, " the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    return Predictor(model, proc, GenerationOptions(max_new_tokens=22))


def _target(x0, y0, x1, y1, name):
    return {"category_id": 1, "category_name": name, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


@pytest.fixture()
def split(tmp_path):
    """3 images, 5 questions; images next to the JSON (the default image root)."""
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate([(40, 60), (50, 30), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        a, b = _target(2, 2, 20, 20, "red chair"), _target(5, 10, 25, 30, "table")
        n_q = 2 if i < 2 else 1
        records.append({
            "file_name": f"im{i}.png", "height": h, "width": w, "ann_list": [a, b],
            "questions": [f"Where can I sit {q}?" for q in range(n_q)],
            "answers": [[a, b], [b]][:n_q],
            "text_answers": ["Sit on the red chair {seg} near the table {seg}.", None][:n_q],
        })
    path = tmp_path / "split.json"
    path.write_text(json.dumps(records))
    return path, records


def test_run_inference_writes_valid_prediction_lines(predictor, split, tmp_path):
    path, records = split
    out = tmp_path / "pred.jsonl"
    summary = run_inference(predictor, f"muse:{path}", out, batch_size=2, progress=False)
    assert (summary.total, summary.written, summary.resumed, summary.failed) == (5, 5, 0, 0)
    preds = load_predictions(out, records)  # the evaluator's own validation (sizes, marker counts)
    assert sorted(k[:2] for k in preds) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert all(p.num_masks == 2 and not p.teacher_forced for p in preds.values())
    # batched lines equal one-by-one predictions
    one = predictor(str(path.parent / "im1.png"), "Where can I sit 0?")
    line = next(json.loads(raw) for raw in out.read_text().splitlines() if json.loads(raw)["image"] == 1)
    assert line["answer"] == one.answer and line["masks"] == one.to_json()["masks"]


def test_resume_skips_done_lines_and_drops_a_partial_tail(predictor, split, tmp_path):
    path, records = split
    out = tmp_path / "pred.jsonl"
    run_inference(predictor, f"muse:{path}", out, batch_size=2, limit=3, progress=False)
    full = out.read_text().splitlines()
    assert len(full) == 3
    # simulate a crash in the middle of writing line 3
    out.write_text("\n".join(full[:2]) + "\n" + full[2][: len(full[2]) // 2])
    assert len(read_done(out)) == 2 and out.read_text().endswith("\n")
    summary = run_inference(predictor, f"muse:{path}", out, batch_size=4, progress=False)
    assert (summary.resumed, summary.written) == (2, 3)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5 and len({(x["image"], x["question"]) for x in lines}) == 5
    assert json.loads(full[2]) in lines  # the redone question gives the same line
    again = run_inference(predictor, f"muse:{path}", out, progress=False)
    assert again.written == 0 and again.resumed == 5


def test_broken_line_in_the_middle_is_an_error(tmp_path):
    out = tmp_path / "pred.jsonl"
    out.write_text('{"image": 0, "question": 0}\n{oops\n{"image": 1, "question": 0}\n')
    with pytest.raises(DataError, match="line 2"):
        read_done(out)


def test_teacher_forced_lines(predictor, split, tmp_path):
    path, records = split
    out = tmp_path / "tf.jsonl"
    run_inference(predictor, f"muse:{path}", out, teacher_forced=True, progress=False)
    preds = load_predictions(out, records)
    assert all(k[2] == "teacher_forced" for k in preds)
    first = preds[(0, 0, "teacher_forced")]
    assert first.answer == "Sit on the red chair [SEG] near the table [SEG]." and first.num_masks == 2
    # no text answer: built from the target descriptions
    assert preds[(0, 1, "teacher_forced")].num_masks == 1


def test_unreadable_image_is_skipped_and_counted(predictor, split, tmp_path):
    path, records = split
    (path.parent / "im1.png").write_bytes(b"broken")
    out = tmp_path / "pred.jsonl"
    summary = run_inference(predictor, records, out, image_root=path.parent, batch_size=4, progress=False)
    assert (summary.written, summary.failed) == (3, 2)


def test_data_specs(split, tmp_path):
    path, records = split
    recs, root, source = parse_data_spec(f"muse:{path}:/images")
    assert recs == records and root == "/images" and source == str(path)
    assert parse_data_spec(f"muse:{path}")[1] == str(path.parent)
    with pytest.raises(ConfigError, match="unknown data spec"):
        parse_data_spec("coco:x")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_data_spec(f"muse:{tmp_path}/nope.json")
    with pytest.raises(ConfigError, match="refer spec"):
        parse_data_spec("refer:root:refcoco")


def test_overlay_and_answer_colours():
    answer = "You can sit on the red chair [SEG] next to the table [SEG]. <b>"
    assert target_names(answer) == ["red chair", "table"]
    masks = np.zeros((2, 30, 40), dtype=bool)
    masks[0, :10, :10] = True
    masks[1, 20:, 20:] = True
    img = np.full((30, 40, 3), 128, dtype=np.uint8)
    pic = np.asarray(render_overlay(img, masks, target_names(answer)))
    assert pic.shape[1] >= 40 and pic.shape[0] > 30  # legend below the image
    assert tuple(pic[0, 0]) == colour(0)  # outline pixel in target 1's colour
    blended = pic[5, 5].astype(int)
    assert np.all(np.abs(blended - (128 + np.array(colour(0))) / 2) <= 1)
    assert tuple(pic[15, 15]) == (128, 128, 128)  # untouched background
    assert tuple(pic[25, 30]) != (128, 128, 128)
    html = answer_html(answer)
    assert html.count("pixellm-seg") == 2 and "&lt;b&gt;" in html
    assert '#{:02x}{:02x}{:02x}">red chair'.format(*colour(0)).replace('">', ';font-weight:bold">') in html
    with pytest.raises(ValueError, match="do not match"):
        render_overlay(img, masks[:, :10], None)
