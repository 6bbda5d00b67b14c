"""SegmentationDataset: encodes good samples, skips and counts bad ones (also across workers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pixellm.data.dataset import SegmentationDataset
from pixellm.errors import InputError

POLY = [[2, 2, 10, 2, 10, 8, 2, 8]]


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


def test_bad_samples_are_skipped_and_counted(tmp_path):
    ds = SegmentationDataset.from_muse(write_data(tmp_path), fake_encode)
    assert len(ds) == 8
    items = [ds[i] for i in range(len(ds))]
    good = [x for x in items if x is not None]
    assert [x["question"] for x in good] == [
        "good one Please respond with segmentation mask.", "good none Please respond with segmentation mask."]
    assert good[0]["size"] == (16, 12) and good[0]["masks"].shape == (1, 12, 16)
    assert good[0]["masks"][0, 2:8, 2:10].all() and good[0]["masks"].sum() == 48
    assert good[1]["masks"].shape == (0, 12, 16)
    assert ds.skipped_counts() == {
        "malformed_record": 1, "missing_image": 1, "unreadable_image": 1, "size_mismatch": 1,
        "bad_masks": 1, "seg_count": 1, "encode_error": 1,
    }
    assert ds.skipped_report().startswith("skipped 7 samples: malformed_record 1, missing_image 1")


def test_counts_reach_the_main_process_from_workers(tmp_path):
    ds = SegmentationDataset.from_muse(write_data(tmp_path), fake_encode)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: [x for x in b if x is not None])
    kept = sum(len(batch) for batch in loader)
    assert kept == 2
    assert sum(ds.skipped_counts().values()) == 7


def test_with_the_real_processor(tmp_path):
    from pixellm.data.collate import collate
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    processor = PixelLMProcessor.for_tiny()
    ds = SegmentationDataset.from_muse(write_data(tmp_path), processor.encode_example)
    batch = collate([ds[i] for i in range(len(ds))], pad_token_id=0)
    # "explode" is only an error for fake_encode; the real processor encodes it.
    assert batch["input_ids"].shape[0] == 3 and batch["skipped"] == 5
    assert [m.shape[0] for m in batch["gt_masks"]] == [1, 0, 1]
    assert batch["gt_masks"][0].shape == (1, 12, 16) and int(batch["gt_masks"][0].sum()) == 48


def test_requires_known_reasons():
    with pytest.raises(ValueError):
        SegmentationDataset([], fake_encode, skipped={"whatever": 1})
