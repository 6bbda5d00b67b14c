"""MUSE reader: polygons + RLE, with/without text answers, lazy masks, lenient training samples."""

from __future__ import annotations

import json
import pickle
import random
import tracemalloc

import numpy as np
import pytest

from pixellm.data.muse import iter_questions, load_muse, muse_samples
from pixellm.data.prompts import INSTRUCTION, INSTRUCTIONS, multi_refer_answer, multi_refer_question
from pixellm.errors import DataError

POLY = [[10, 10, 30, 10, 30, 20, 10, 20]]  # pycocotools fills rows 10..19, columns 10..29
RLE = {"size": [40, 50], "counts": [41, 3, 1956]}  # column-major: column 1, rows 1..3


def ann(name, seg, rephrased=None):
    a = {"category_id": 1, "category_name": name, "bbox": [0, 0, 1, 1], "segmentation": seg}
    if rephrased:
        a["rephrased_name"] = rephrased
    return a


def write_fixture(tmp_path):
    chair, table = ann("chair", POLY, "the wooden chair"), ann("table", RLE)
    records = [
        {  # text answers given
            "file_name": "a.png", "height": 40, "width": 50, "ann_list": [chair, table],
            "questions": ["Where can I sit?", "What holds the cup?"],
            "answers": [[chair, table], []],
            "text_answers": ["On the chair {seg} next to the table {seg}.", "Nothing here."],
        },
        {  # no text answers: built from descriptions
            "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
            "height": 40, "width": 50, "ann_list": [chair, table],
            "questions": ["Which furniture is here?"], "answers": [[chair, table]],
        },
    ]
    path = tmp_path / "muse.json"
    path.write_text(json.dumps(records))
    return path


def test_polygon_and_rle_decode_to_known_pixels(tmp_path):
    path = write_fixture(tmp_path)
    qs = list(iter_questions(load_muse(path), image_root=tmp_path))
    masks = qs[0].target_masks()
    assert masks.shape == (2, 40, 50) and masks.dtype == bool
    expected_poly = np.zeros((40, 50), bool)
    expected_poly[10:20, 10:30] = True
    expected_rle = np.zeros((40, 50), bool)
    expected_rle[1:4, 1] = True
    assert (masks[0] == expected_poly).all()
    assert (masks[1] == expected_rle).all()
    assert qs[1].target_masks().shape == (0, 40, 50)


def test_answers_with_and_without_text_answers(tmp_path):
    path = write_fixture(tmp_path)
    qs = list(iter_questions(load_muse(path), image_root=tmp_path))
    assert [q.answer_text() for q in qs] == [
        "On the chair {seg} next to the table {seg}.",
        "Nothing here.",
        "They are the wooden chair {seg} and table {seg}.",
    ]
    assert qs[0].prompt() == f"Where can I sit? {INSTRUCTION}"
    assert qs[2].image_path == str(tmp_path / "val2017" / "000000000139.jpg")


def test_muse_samples_are_lazy_and_picklable(tmp_path):
    path = write_fixture(tmp_path)
    samples, skipped = muse_samples(path)
    assert not skipped and len(samples) == 3
    s = samples[0]
    assert s.question == "Where can I sit? Please respond with segmentation mask."
    assert s.answer == "On the chair {seg} next to the table {seg}."
    assert s.image_path == str(tmp_path / "a.png")  # image root defaults to the JSON's folder
    assert s.meta == {"path": str(path), "record": 0, "question": 0}
    clone = pickle.loads(pickle.dumps(s))  # DataLoader workers may receive samples by pickle
    assert (clone.load_masks() == s.load_masks()).all() and s.load_masks()[0].sum() == 200
    # Paraphrases only with an rng, always from the fixed list.
    rng = random.Random(0)
    suffixes = {muse_samples(path, rng=rng)[0][0].question.split("? ", 1)[1] for _ in range(30)}
    assert suffixes <= set(INSTRUCTIONS) and len(suffixes) > 1


def test_malformed_records_skip_in_training_but_raise_in_strict_loading(tmp_path):
    path = write_fixture(tmp_path)
    records = json.loads(path.read_text())
    records.append({"height": 4, "width": 4, "questions": ["q"]})  # no answers
    records.append({"height": 40, "width": 50, "questions": ["q"], "answers": [[ann("x", POLY)]],
                    "text_answers": ["no marker"]})  # {seg} count wrong: caught per sample later
    path.write_text(json.dumps(records))
    samples, skipped = muse_samples(path)
    assert skipped == {"malformed_record": 1} and len(samples) == 4
    with pytest.raises(DataError, match=r"muse\.json: record 2: missing field 'answers'"):
        load_muse(path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"height": 1,')
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        muse_samples(bad)


def test_invalid_segmentation_names_file_record_and_target(tmp_path):
    records = [{"file_name": "a.png", "height": 40, "width": 50,
                "questions": ["q"], "answers": [[ann("x", POLY), ann("y", {"size": [40, 50], "counts": [5, 5]})]]}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(records))
    samples, _ = muse_samples(path)
    with pytest.raises(DataError, match=r"m\.json: record 0 question 0 target 1: uncompressed RLE"):
        samples[0].load_masks()


def test_multi_refer_prompt_forms():
    assert multi_refer_question(["a"]) == "Please segment the a in the image."
    assert multi_refer_question(["a", "b", "c"]) == "Please segment the a, b and c in the image."
    assert multi_refer_answer(["a", "b", "c"]) == "a is {seg}, b is {seg} and c is {seg}."


def test_loader_memory_stays_flat_over_many_records(tmp_path):
    """2,000 records x 2 masks of 128x128 would be 64 MB decoded; none may be kept."""
    n, h, w = 2000, 128, 128
    poly = [[5, 5, 100, 5, 100, 90, 5, 90]]
    records = [
        {"file_name": f"{i}.png", "height": h, "width": w, "questions": ["q"],
         "answers": [[ann("a", poly), ann("b", poly)]], "text_answers": ["{seg} {seg}"]}
        for i in range(n)
    ]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records))
    decoded_total = n * 2 * h * w
    tracemalloc.start()
    try:
        samples, _ = muse_samples(path)
        loaded, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pixels = 0
        for s in samples:
            pixels += int(s.load_masks().sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels == n * 2 * 95 * 85
    assert loaded < decoded_total / 5  # nothing decoded while reading the file
    assert peak - loaded < 1_000_000  # one sample's masks at a time (2 x 16 KB), not 64 MB
