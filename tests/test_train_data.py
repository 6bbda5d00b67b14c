"""Training data plan (rates, sharding, resumability) and bad-sample skipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.errors import ConfigError, DataError
from pixellm.train.data import EncodedDataset, collate_train, rank_batches, sampling_plan


def test_plan_follows_rates_and_covers_each_source():
    plan = sampling_plan([50, 30, 20], [9, 2, 4], 15000, seed=1)
    counts = np.bincount(np.searchsorted([50, 80], plan, side="right"), minlength=3) / len(plan)
    assert counts == pytest.approx([9 / 15, 2 / 15, 4 / 15], abs=0.02)
    # Within a pass every sample of a source comes once (seeded permutation per pass).
    first = [i for i in plan if i < 50][:50]
    assert sorted(first) == list(range(50))
    assert np.array_equal(plan, sampling_plan([50, 30, 20], [9, 2, 4], 15000, seed=1))
    assert not np.array_equal(plan, sampling_plan([50, 30, 20], [9, 2, 4], 15000, seed=2))
    with pytest.raises(ConfigError):
        sampling_plan([10, 0], [1, 1], 5, 0)


def test_rank_batches_partition_the_plan_and_resume_by_offset():
    plan = np.arange(24)
    r0, r1 = rank_batches(plan, 2, 2, 0), rank_batches(plan, 2, 2, 1)
    assert r0[0] == [0, 1] and r1[0] == [2, 3] and len(r0) == 6
    assert sorted(sum(r0 + r1, [])) == list(range(24))
    assert rank_batches(plan, 2, 2, 1, start=4) == r1[4:]


def test_bad_samples_are_replaced_and_reported(tmp_path):
    from pixellm.data.muse import muse_samples
    from pixellm.data.synth import write_synth
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    write_synth(tmp_path, {"train": 6}, seed=0)
    records = json.loads((tmp_path / "train.json").read_text())
    records[0]["file_name"] = "images/train/missing.png"  # both questions of image 0 are bad
    (tmp_path / "train.json").write_text(json.dumps(records))
    samples, _ = muse_samples(tmp_path / "train.json")
    ds = EncodedDataset([samples], PixelLMProcessor.for_tiny(), ["synth"])
    first = ds[0]
    assert [s.reason.split(":")[0] for s in first["skips"]] == ["DataError"] * 2
    assert "missing.png" in first["skips"][0].reason
    assert "record 0" in first["skips"][0].where
    assert first["masks"].shape[0] == first["num_targets"]
    batch = collate_train([first, ds[3]], pad_token_id=0)
    assert len(batch["skips"]) == 2 and batch["input_ids"].shape[0] == 2 and len(batch["gt_masks"]) == 2
    # All bad: a clear error instead of an endless loop.
    bad = EncodedDataset([samples[:2]], PixelLMProcessor.for_tiny(), ["synth"])
    with pytest.raises(DataError, match="consecutive bad samples in synth"):
        bad[0]
