"""The trainer's data glue: configured sources -> one SegmentationDataset (read skips kept), and
training batches that keep their size while reporting the replaced bad samples."""

from __future__ import annotations

import json

import pytest

from pixellm.errors import ConfigError
from pixellm.train.config import DataSource
from pixellm.train.data import build_training_data, collate_train


def test_bad_samples_are_replaced_and_reported_in_batches(tmp_path):
    from pixellm.build import tiny_processor
    from pixellm.data.synth import write_synth

    write_synth(tmp_path, {"train": 6}, seed=0)
    records = json.loads((tmp_path / "train.json").read_text())
    records[0]["file_name"] = "images/train/missing.png"  # both questions of image 0 are bad
    records.append({"height": 4, "width": 4})  # malformed: counted while reading
    (tmp_path / "train.json").write_text(json.dumps(records))
    processor = tiny_processor()
    sources = [DataSource(name="synth", kind="synth", path=str(tmp_path / "train.json"), rate=3.0)]
    ds, rates = build_training_data(sources, processor, seed=0)
    assert rates == [3.0] and ds.names == ["synth"] and ds.read_skips == {"malformed_record": 1}
    first = ds[0]
    assert [s.reason for s in first["skips"]] == ["missing_image"] * 2
    assert "missing.png" in first["skips"][0].detail
    assert "record 0" in first["skips"][0].where
    assert first["masks"].shape[0] == first["num_targets"]
    batch = collate_train([first, ds[3]], pad_token_id=0)
    assert len(batch["skips"]) == 2 and batch["input_ids"].shape[0] == 2 and len(batch["gt_masks"]) == 2
    assert "num_targets" not in batch and "skipped" not in batch
    with pytest.raises(ConfigError, match="no training data set"):
        build_training_data([], processor, seed=0)


def test_sample_lengths_are_the_encoded_text_lengths(tmp_path):
    """Length grouping sorts by ``sample_lengths``: the encoded length less the fixed part
    (template and image tokens), so it orders samples as their real lengths do."""
    from pixellm.build import tiny_processor
    from pixellm.data.synth import write_synth
    from pixellm.train.data import sample_lengths

    write_synth(tmp_path, {"train": 40}, seed=0)
    processor = tiny_processor()
    sources = [DataSource(name="synth", kind="synth", path=str(tmp_path / "train.json"), rate=1.0)]
    ds, _ = build_training_data(sources, processor, seed=0)
    lengths = sample_lengths(ds, processor)
    encoded = [int(ds[i]["attention_mask"].shape[0]) for i in range(len(ds))]
    fixed = {e - n for e, n in zip(encoded, lengths)}
    assert len(lengths) == len(ds) == 40 and max(fixed) - min(fixed) <= 1, fixed
