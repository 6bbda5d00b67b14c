"""The encoded-sample cache (``TrainConfig.sample_cache_mb``): a cached item equals a fresh one,
an image's pixels are kept once, the budget holds, replaced samples keep their report, and a
run with the cache trains exactly like one without."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_dataset import fake_encode, write_data
from test_train_resume import make_cfg, synth_dir  # noqa: F401 (a fixture)

from pixellm.build import build_processor
from pixellm.data.dataset import SegmentationDataset
from pixellm.data.muse import muse_samples
from pixellm.errors import ConfigError
from pixellm.model.configuration_pixellm import PixelLMConfig
from pixellm.train.config import TrainConfig
from pixellm.train.trainer import train


def synth_dataset(folder, cache_bytes):
    processor = build_processor(PixelLMConfig.from_preset("tiny"), max_length=160)
    samples, _ = muse_samples(folder / "train.json")
    return SegmentationDataset([samples], processor.encode_example, ["synth"], cache_bytes=cache_bytes)


def assert_same_item(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_cached_items_equal_fresh_ones_and_an_images_pixels_are_kept_once(synth_dir):  # noqa: F811
    fresh, cached = synth_dataset(synth_dir, 0), synth_dataset(synth_dir, 2**30)
    assert fresh.cache is None
    n = len(cached)
    first = [cached[i] for i in range(n)]
    again = [cached[i] for i in range(n)]
    assert cached.cache.stats()["misses"] == n and cached.cache.stats()["hits"] == n
    for i in range(n):
        assert_same_item(again[i], fresh[i])
        assert_same_item(first[i], fresh[i])
    again[0]["input_ids"] = None  # a copy: changing it does not change what is cached
    assert_same_item(cached[0], fresh[0])
    # two questions on one image share one pixel tensor, counted once
    by_image = {}
    for i, s in enumerate(cached.sources[0]):
        by_image.setdefault(s.image_path, []).append(i)
    i, j = next(v for v in by_image.values() if len(v) > 1)[:2]
    assert again[i]["pixel_values"] is again[j]["pixel_values"]
    pixel_bytes = again[0]["pixel_values"].nbytes
    other = sum(v.nbytes for item in first for k, v in item.items() if isinstance(v, torch.Tensor) and k != "pixel_values")
    assert cached.cache.bytes == other + len(by_image) * pixel_bytes


def test_the_cache_stops_adding_at_its_budget(synth_dir):  # noqa: F811
    cached, fresh = synth_dataset(synth_dir, 1), synth_dataset(synth_dir, 0)
    items = [cached[i] for i in range(4)]
    assert len(cached.cache) == 1  # the first item passed the 1-byte budget; nothing after it
    assert cached.cache.stats()["misses"] == 4
    for i in range(4):
        assert_same_item(cached[i], fresh[i])
        assert_same_item(items[i], fresh[i])
    assert cached.cache.stats()["hits"] == 1


def test_a_replaced_sample_comes_back_with_its_report(tmp_path):
    samples, _ = muse_samples(write_data(tmp_path))
    ds = SegmentationDataset([samples], fake_encode, ["d"], cache_bytes=2**20)
    first = ds[2]  # the missing image: replaced by the next good sample (wrapping around)
    again = ds[2]
    assert [s.reason for s in first["skips"]] and again["skips"] == first["skips"]
    assert again["question"] == first["question"] and ds.cache.stats()["hits"] == 1


def test_sample_cache_mb_must_not_be_negative():
    with pytest.raises(ConfigError, match="sample_cache_mb: must be >= 0"):
        TrainConfig(sample_cache_mb=-1).validate()


def test_training_with_the_sample_cache_matches_training_without(synth_dir, tmp_path):  # noqa: F811
    # 8 steps x 4 of 24 questions: items come back; LoRA dropout draws from the RNG, so a cache
    # that changed the RNG's use (or handed out a changed item) would change the weights
    runs = {mb: train(make_cfg(synth_dir, tmp_path / f"cache{mb}", sample_cache_mb=mb, steps=8, save_every=100,
                               val_every=100)) for mb in (0, 64)}
    assert runs[0].sample_cache is None
    stats = runs[64].sample_cache
    assert stats["hits"] == 8 * 4 - 24 and stats["items"] == 24
    summary = json.loads((tmp_path / "cache64" / "train_summary.json").read_text())
    assert summary["sample_cache"] == stats and summary["vision_cache"] is None
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[64].history]
    weights = dict(runs[0].model.named_parameters())
    for name, p in runs[64].model.named_parameters():
        assert torch.equal(p, weights[name]), name
