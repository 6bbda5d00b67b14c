"""SegmentationDataset: encodes good samples; a bad one is replaced by the next good one of its
source and reported (reason, location, detail), also from DataLoader workers; skip counting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pixellm.data.dataset import MAX_RETRIES, SegmentationDataset, Skip, skip_counts, skipped_report
from pixellm.data.muse import muse_samples
from pixellm.errors import ConfigError, DataError, InputError

POLY = [[2, 2, 10, 2, 10, 8, 2, 8]]
# Reasons of samples 2..7 of write_data, in order (fake_encode refuses "explode").
BAD_REASONS = ["missing_image", "unreadable_image", "size_mismatch", "bad_masks", "seg_count", "encode_error"]


def fake_encode(image, question, answer, masks):
    if "explode" in question:
        raise InputError("answer too long for max_length")
    return {"size": image.size, "question": question, "masks": torch.from_numpy(masks)}


def ann(seg):
    return {"category_id": 1, "category_name": "box", "segmentation": seg}


def write_data(tmp_path):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")

    def rec(file, questions, answers, texts=None, h=12, w=16):
        r = {"file_name": file, "height": h, "width": w, "questions": questions, "answers": answers}
        if texts is not None:
            r["text_answers"] = texts
        return r

    records = [
        rec("ok.png", ["good one", "good none"], [[ann(POLY)], []], ["a box {seg}.", "nothing."]),
        rec("missing.png", ["q"], [[ann(POLY)]]),
        rec("broken.png", ["q"], [[ann(POLY)]]),
        rec("small.png", ["q"], [[ann(POLY)]]),  # record says 16x12, image is 10x10
        rec("ok.png", ["q"], [[ann({"size": [12, 16], "counts": [1, 2]})]]),  # RLE sums to 3, not 192
        rec("ok.png", ["q"], [[ann(POLY), ann(POLY)]], ["only one {seg}."]),
        rec("ok.png", ["explode"], [[ann(POLY)]]),
        {"height": 12, "width": 16, "questions": ["q"]},  # malformed: no answers
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return path


def muse_dataset(path, encode):
    samples, skipped = muse_samples(path)
    return SegmentationDataset([samples], encode, [str(path)], skipped)


def test_bad_samples_are_replaced_reported_and_counted(tmp_path):
    ds = muse_dataset(write_data(tmp_path), fake_encode)
    assert len(ds) == 8 and ds.read_skips == {"malformed_record": 1}
    good, none = ds[0], ds[1]
    assert [good["question"], none["question"]] == [
        "good one Please respond with segmentation mask.", "good none Please respond with segmentation mask."]
    assert good["skips"] == [] and none["skips"] == []
    assert good["size"] == (16, 12) and good["masks"].shape == (1, 12, 16)
    assert good["masks"][0, 2:8, 2:10].all() and good["masks"].sum() == 48
    assert none["masks"].shape == (0, 12, 16)
    # Sample 2 and every following one are bad: replaced by the next good one (wrapping around).
    item = ds[2]
    assert item["question"] == good["question"] and torch.equal(item["masks"], good["masks"])
    assert [s.reason for s in item["skips"]] == BAD_REASONS
    assert "record 1" in item["skips"][0].where and "missing.png" in item["skips"][0].detail
    assert "record 6" in item["skips"][-1].where and "max_length" in item["skips"][-1].detail
    assert [len(ds[i]["skips"]) for i in range(3, 8)] == [5, 4, 3, 2, 1]
    counts = skip_counts(ds.read_skips, item["skips"])
    assert counts == {
        "malformed_record": 1, "missing_image": 1, "unreadable_image": 1, "size_mismatch": 1,
        "bad_masks": 1, "seg_count": 1, "encode_error": 1,
    }
    assert skipped_report(counts).startswith("skipped 7 samples: malformed_record 1, missing_image 1")
    assert skipped_report({}) == "skipped 0 samples"


def test_reports_reach_the_main_process_from_workers(tmp_path):
    ds = muse_dataset(write_data(tmp_path), fake_encode)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list)
    items = [x for batch in loader for x in batch]
    assert len(items) == 8  # batch sizes stay fixed: every bad sample was replaced
    assert all(x["question"].startswith("good") for x in items)
    counts = skip_counts(skips=[s for x in items for s in x["skips"]])
    assert counts == {r: k + 1 for k, r in enumerate(BAD_REASONS)}  # sample 2+k is skipped by k+1 items


def test_with_the_real_processor(tmp_path):
    from pixellm.build import tiny_processor
    from pixellm.train.data import collate_train

    processor = tiny_processor()
    ds = muse_dataset(write_data(tmp_path), processor.encode_example)
    # "explode" is only an error for fake_encode: the real processor encodes it, so it replaces 2..6.
    batch = collate_train([ds[i] for i in range(3)], pad_token_id=0)
    assert batch["input_ids"].shape[0] == 3 and len(batch["skips"]) == 5
    assert [s.reason for s in batch["skips"]] == BAD_REASONS[:5]
    assert [m.shape[0] for m in batch["gt_masks"]] == [1, 0, 1]
    assert batch["gt_masks"][0].shape == (1, 12, 16) and int(batch["gt_masks"][0].sum()) == 48


def test_all_bad_sources_and_unknown_reasons_are_clear_errors(tmp_path):
    ds = muse_dataset(write_data(tmp_path), fake_encode)
    bad = SegmentationDataset([ds.sources[0][2:] * 3], fake_encode, ["junk"])
    assert len(bad) == 18 > MAX_RETRIES
    with pytest.raises(DataError, match=f"{MAX_RETRIES} consecutive bad samples in junk"):
        bad[0]
    with pytest.raises(ConfigError, match=r"\['empty'\] have no usable samples"):
        SegmentationDataset([ds.sources[0], []], fake_encode, ["ok", "empty"])
    with pytest.raises(ValueError, match="unknown skip reason"):
        SegmentationDataset(ds.sources, fake_encode, read_skips={"whatever": 1})
    with pytest.raises(ValueError, match="unknown skip reason"):
        Skip("whatever", "here")
