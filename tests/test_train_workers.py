"""DataLoader worker processes (``num_workers > 0``): images are decoded and resized in the
workers, the sample order stays the fixed plan, and a killed run resumed with workers ends with
exactly the weights of an uninterrupted run without them."""

from __future__ import annotations

import os
import shutil

import torch
from test_train_resume import make_cfg, synth_dir, trainable_weights  # noqa: F401 (fixture)

from pixellm.data.dataset import SegmentationDataset
from pixellm.train import checkpoint as ckpt
from pixellm.train.trainer import train


def test_resume_with_workers_equals_run_without(synth_dir, tmp_path, monkeypatch):  # noqa: F811
    reference = trainable_weights(train(make_cfg(synth_dir, tmp_path / "plain", steps=4, num_workers=0)))

    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    load = SegmentationDataset.load

    def spy(sample):  # forked workers inherit the patched class; each records its process id
        (pid_dir / f"{os.getpid()}-{sample.source}").touch()
        return load(sample)

    monkeypatch.setattr(SegmentationDataset, "load", staticmethod(spy))
    killed = train(make_cfg(synth_dir, tmp_path / "workers", steps=4, num_workers=2, stop_after=3))
    assert killed.stopped_early
    # Training samples were decoded (PIL open + convert; the processor's resize follows in the
    # same call) in 2 worker processes, never in this one (which reads the held-out batches).
    seen = [p.name.split("-", 1) for p in pid_dir.iterdir()]
    pids = {int(pid) for pid, source in seen if source == "synth"}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {int(pid) for pid, source in seen if source == "val"} == {os.getpid()}
    # A copy of the step-2 checkpoint resumed without workers, the original with workers.
    shutil.copytree(tmp_path / "workers" / ckpt.checkpoint_name(2), tmp_path / "nw" / ckpt.checkpoint_name(2))
    with_workers = trainable_weights(train(make_cfg(synth_dir, tmp_path / "workers", steps=4, num_workers=2),
                                           resume=True))
    without = trainable_weights(train(make_cfg(synth_dir, tmp_path / "nw", steps=4, num_workers=0), resume=True))
    assert with_workers.keys() == reference.keys() == without.keys()
    for name, ref in reference.items():
        assert torch.equal(with_workers[name], ref), name
        assert torch.equal(without[name], ref), name
