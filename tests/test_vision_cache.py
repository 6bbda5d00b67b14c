"""FrozenVisionCache: the frozen tower's features per image, equal to running the tower; the
trainer attaches it only where the tower cannot change, and a cached run trains like an
uncached one."""

from __future__ import annotations

import pytest
import torch
from test_train_resume import make_cfg, synth_dir  # noqa: F401 (a fixture)
from transformers import CLIPVisionConfig, CLIPVisionModel

from pixellm.conventions import grid_valid_mask
from pixellm.errors import ConfigError
from pixellm.model.vision import FrozenVisionCache, clip_multiscale_features, tower_digest
from pixellm.train.config import TrainConfig
from pixellm.train.trainer import train

LAYERS = [-1, -2]


def tiny_tower() -> CLIPVisionModel:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=8, image_size=64, projection_dim=32)
    return CLIPVisionModel(cfg).eval().requires_grad_(False)


def direct(tower, pixels, valid):
    return clip_multiscale_features(tower, pixels, valid, LAYERS)


def test_cache_gives_the_towers_features_and_counts_hits_and_misses():
    tower = tiny_tower()
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    valid = grid_valid_mask(torch.tensor([[64, 64], [64, 40], [64, 64], [32, 64]]), 64, 8)
    cache = FrozenVisionCache(max_bytes=2**20)

    first = cache.features(tower, pixels, valid, LAYERS)
    for got, ref in zip(first, direct(tower, pixels, valid)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    assert all(not t.requires_grad for t in first)

    # A new batch: images 2, 0 again (hits), image 1 with another valid mask and a new image
    # (misses); the rows come back in the batch's order.
    new = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batch = torch.cat([pixels[2:3], new, pixels[0:1], pixels[1:2]])
    batch_valid = torch.stack([valid[2], valid[0], valid[0], valid[0]])
    second = cache.features(tower, batch, batch_valid, LAYERS)
    for got, ref in zip(second, direct(tower, batch, batch_valid)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (cache.hits, cache.misses, len(cache)) == (2, 6, 6)
    assert cache.stats()["hit_rate"] == pytest.approx(2 / 8)


def test_cache_stops_adding_at_its_budget_and_still_answers():
    tower = tiny_tower()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    one_image = len(LAYERS) * 64 * 32 * 4  # 64 patches x 32 channels x fp32, per selected layer
    cache = FrozenVisionCache(max_bytes=one_image)
    got = cache.features(tower, pixels, None, LAYERS)
    assert len(cache) == 1 and cache.bytes == one_image
    for g, ref in zip(got, direct(tower, pixels, None)):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-5)
    cache.features(tower, pixels, None, LAYERS)
    assert (cache.hits, cache.misses) == (1, 5)  # only the kept image hits


def test_features_added_from_outside_are_read_back_within_the_budget():
    """What stage 1 hands to stage 2: features computed elsewhere are stored under the keys the
    model's lookup computes (pixels + valid mask), and count against the same budget."""
    tower = tiny_tower()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    valid = grid_valid_mask(torch.tensor([[64, 64], [64, 40], [32, 64]]), 64, 8)
    one_image = len(LAYERS) * 64 * 32 * 4  # 64 patches x 32 channels x fp32, per selected layer
    cache = FrozenVisionCache(max_bytes=2 * one_image, tower_digest=tower_digest(tower))
    computed = direct(tower, pixels, valid)
    cache.add(pixels, valid, computed)
    assert len(cache) == 2 and cache.bytes == 2 * one_image  # the third did not fit
    got = cache.features(tower, pixels[:2], valid[:2], LAYERS)
    assert (cache.hits, cache.misses) == (2, 0)
    for g, ref in zip(got, computed):
        assert torch.equal(g, ref[:2])  # the stored rows themselves
    cache.features(tower, pixels[:1], valid[1:2], LAYERS)  # another valid mask: another image
    assert cache.misses == 1


def test_tower_digest_follows_the_weights():
    a, b = tiny_tower(), tiny_tower()
    assert tower_digest(a) == tower_digest(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert tower_digest(a) != tower_digest(b)


def test_trainer_refuses_features_of_another_tower(synth_dir, tmp_path):  # noqa: F811
    cfg = make_cfg(synth_dir, tmp_path / "other", vision_cache_mb=64, steps=1, save_every=100, val_every=100)
    given = FrozenVisionCache(2**20, tower_digest="not this tower")
    given.add(torch.randn(1, 3, 64, 64), None, [torch.zeros(1, 64, 128)])
    with pytest.raises(ConfigError, match="another tower"):
        train(cfg, vision_cache=given)


def test_trainer_drops_given_features_keyed_for_another_precision(synth_dir, tmp_path):  # noqa: F811
    """Features added outside autocast are never found by a bf16-autocast run: it starts empty."""
    from pixellm.train.setup import build_model

    cfg = make_cfg(synth_dir, tmp_path / "bf16", vision_cache_mb=64, steps=1, save_every=100, val_every=100,
                   precision="bf16")
    model, _ = build_model(cfg)  # the same seeded random tower the trainer builds
    given = FrozenVisionCache(2**20, tower_digest=tower_digest(model.vision_tower))
    given.add(torch.randn(2, 3, 64, 64), None, [torch.zeros(2, 64, 128)])
    result = train(cfg, vision_cache=given)
    assert result.vision_cache["misses"] > 0  # a cache was used, not the given one
    assert (given.hits, given.misses, len(given)) == (0, 0, 2)


def test_cache_key_depends_on_the_autocast_state():
    pixels = torch.randn(3, 64, 64)
    plain = FrozenVisionCache._key(pixels, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = FrozenVisionCache._key(pixels, None)
    assert plain != autocast
    assert plain == FrozenVisionCache._key(pixels.clone(), None)
    assert plain != FrozenVisionCache._key(pixels + 1e-3, None)


def test_vision_cache_needs_a_frozen_tower():
    with pytest.raises(ConfigError, match="vision_cache_mb: needs a frozen vision tower"):
        TrainConfig(trainable="all", vision_cache_mb=64).validate()
    with pytest.raises(ConfigError, match="vision_cache_mb: must be >= 0"):
        TrainConfig(vision_cache_mb=-1).validate()


def test_training_with_the_cache_matches_training_without(synth_dir, tmp_path):  # noqa: F811
    runs = {}
    for mb in (0, 64):
        runs[mb] = train(make_cfg(synth_dir, tmp_path / f"cache{mb}", vision_cache_mb=mb, steps=8, save_every=100,
                                  val_every=100, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}))
    cached = runs[64]
    # 8 steps x 4 samples of 24 questions on 12 images, plus the 4 validation questions: images repeat
    assert cached.vision_cache["hits"] > 0 and cached.vision_cache["images"] <= 14
    assert runs[0].vision_cache is None
    assert cached.model.vision_cache is None  # not handed on with the trained model
    for a, b in zip(runs[0].history, cached.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    weights = {n: p for n, p in runs[0].model.named_parameters() if p.requires_grad}
    for n, p in cached.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, weights[n], rtol=1e-3, atol=1e-4)
