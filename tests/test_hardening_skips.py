"""The skip report counts distinct bad samples, and replacements apart (issue 12 row 18)."""

from __future__ import annotations

import json

from pixellm.data.dataset import SkipTally
from pixellm.train.config import DataSource
from pixellm.train.data import build_training_data


def bad_dataset(tmp_path):
    from pixellm.build import tiny_processor
    from pixellm.data.synth import write_synth

    write_synth(tmp_path, {"train": 6}, seed=0)
    records = json.loads((tmp_path / "train.json").read_text())
    records[0]["file_name"] = "images/train/missing.png"  # every question of image 0 is bad
    (tmp_path / "train.json").write_text(json.dumps(records))
    sources = [DataSource(name="synth", kind="synth", path=str(tmp_path / "train.json"))]
    ds, _ = build_training_data(sources, tiny_processor(), seed=0)
    return ds, len(records[0]["questions"])


def test_each_bad_sample_counts_once_whatever_the_replacements(tmp_path):
    ds, bad = bad_dataset(tmp_path)
    assert bad >= 2
    tally = SkipTally(ds.read_skips)
    for _epoch in range(3):  # three epochs: every bad sample met three times, some by several items
        for i in range(len(ds)):
            tally.add(ds[i]["skips"])
    replacements = sum(tally.replacements.values())
    # item 0 walks over all `bad` samples, item 1 over bad-1 ..., every epoch
    assert replacements == 3 * sum(range(1, bad + 1))
    assert tally.distinct() == {"missing_image": bad}
    assert tally.report() == f"skipped {bad} samples: missing_image {bad}; {replacements} replacements"
    # survives a checkpoint (JSON) round trip and merging across processes without double counting
    again = SkipTally.from_state(json.loads(json.dumps(tally.to_state())))
    assert again.merge(tally).distinct() == {"missing_image": bad}
    assert SkipTally.from_state({"missing_image": 5}).distinct() == {"missing_image": 5}  # old format


def test_training_run_reports_distinct_samples(tmp_path, capsys):
    from pixellm.cli import main

    ds, bad = bad_dataset(tmp_path / "data")
    n = len(ds)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "preset: tiny\ntrainable: all_but_vision\nlora: {enabled: false}\n"
        f"data: [{{name: s, kind: synth, path: {tmp_path / 'data' / 'train.json'}}}]\n"
        f"steps: {n}\nbatch_size: 2\neffective_batch: 2\nmax_length: 160\nprogress: false\n"
        f"save_every: {n}\nval_every: {10 * n}\n"
    )
    assert main(["train", "--config", str(cfg), f"output_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert saved["missing_image"] == bad  # two epochs: each bad sample met at least twice
    replacements = sum(saved["details"]["replacements"].values())
    assert replacements > bad
    assert f"skipped {bad} samples: missing_image {bad}; {replacements} replacements" in out
