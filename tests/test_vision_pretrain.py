"""Stage 1 (``pixellm.train.vision_pretrain``): the dense per-pixel task trains the tower so that
what the LLM reads tells shapes apart, and the demo caches its result."""

from __future__ import annotations

import json

import pytest
import torch

from pixellm.build import build_pixellm, build_processor
from pixellm.data.synth import SynthConfig, write_synth
from pixellm.demo import _split_dense, largest_object_shape, shape_probe
from pixellm.model.configuration_pixellm import PixelLMConfig
from pixellm.train.vision_pretrain import (
    IGNORE,
    DensePixelHead,
    VisionPretrainConfig,
    cached_result,
    dense_loss,
    dense_set_from_muse,
    pretrain_vision_tower,
    save_pretrained_tower,
    to_patches,
    tower_features,
)


def test_dense_head_maps_each_token_to_its_own_pixels():
    head = DensePixelHead(dim=4, num_classes=3, patch=2)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(12.0))  # class k, pixel (i, j) -> 4k + 2i + j
    tokens = torch.zeros(1, 4, 4)  # a 2 x 2 patch grid
    out = head(tokens)
    assert out.shape == (1, 3, 4, 4)
    # every patch repeats the same 2 x 2 pattern per class, laid out row-major
    assert torch.equal(out[0, 1, :2, :2], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(out[0, 2, 2:, 2:], torch.tensor([[8.0, 9.0], [10.0, 11.0]]))


def test_dense_loss_per_patch_equals_the_loss_on_the_image_layout():
    """The stage-1 loss is computed in the head's per-patch layout; it is the per-pixel CE plus
    the object pixels' geometry MSE of the image layout, value and gradients."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    k, patch = 5, 4
    head = DensePixelHead(dim=16, num_classes=k + 3, patch=patch)
    tokens = torch.randn(2, 16, 16, requires_grad=True)  # a 4 x 4 grid of 4 x 4 patches
    labels = torch.randint(0, k, (2, 16, 16))
    labels[1, 12:] = IGNORE  # padding rows
    geometry = torch.rand(2, 3, 16, 16)
    assert torch.equal(to_patches(labels, patch)[5], labels[0, 4:8, 4:8].reshape(-1))  # patch (1, 1)
    assert torch.equal(to_patches(geometry, patch)[16 + 2], geometry[1, :, 0:4, 8:12].reshape(3, -1))

    out = head(tokens)
    objects = (labels > 0)[:, None].expand_as(geometry)
    expected = F.cross_entropy(out[:, :k], labels, ignore_index=IGNORE) + 0.7 * F.mse_loss(
        out[:, k:][objects], geometry[objects])
    got = dense_loss(head, tokens, to_patches(labels, patch), to_patches(geometry, patch), 0.7)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(got, [tokens, head.proj.weight]),
                    torch.autograd.grad(expected, [tokens, head.proj.weight])):
        torch.testing.assert_close(a, b)
    # no object pixel: the class term alone
    background = torch.zeros_like(labels)
    torch.testing.assert_close(
        dense_loss(head, tokens, to_patches(background, patch), to_patches(geometry, patch), 0.7),
        F.cross_entropy(out[:, :k], background))


def test_dense_set_labels_follow_the_annotations(tmp_path):
    write_synth(tmp_path, {"train": 12}, seed=1)
    processor = build_processor(PixelLMConfig.from_preset("tiny"), max_length=160)
    dense = dense_set_from_muse(tmp_path / "train.json", processor.image_processor)
    records = json.loads((tmp_path / "train.json").read_text())
    assert len(dense) == len(records)
    assert dense.labels.shape == (len(records), 64, 64)
    # each image has as many foreground classes as annotations, areas as annotated
    for rec, lab in zip(records, dense.labels):
        classes = [dense.categories.index(a["category_id"]) + 1 for a in rec["ann_list"]]
        for cls, ann in zip(classes, rec["ann_list"]):
            assert int((lab == cls).sum()) == ann["area"]


@pytest.mark.slow
def test_stage1_loss_falls_and_the_llm_grid_learns_shape(tmp_path):
    torch.manual_seed(0)
    # the demo's scenes (2-6 shapes), one question per image: 1500 images
    write_synth(tmp_path, {"train": 1500}, seed=0, cfg=SynthConfig(questions_per_image=1))
    model, processor = build_pixellm("tiny", max_length=160)
    cfg = model.config
    dense = dense_set_from_muse(tmp_path / "train.json", processor.image_processor)
    shapes = largest_object_shape(tmp_path / "train.json")
    n_fit = len(dense) - 500
    fit, held = _split_dense(dense, n_fit)
    before = shape_probe(model, dense, shapes, n_fit)
    recipe = VisionPretrainConfig(steps=700, batch_size=16, lr=2e-3)
    result = pretrain_vision_tower(model.vision_tower, fit, cfg.vision_select_layers, recipe, held_out=held)
    after = shape_probe(model, dense, shapes, n_fit)
    # the demo's way: the probe from the features it hands on to stage 2 gives the same accuracy
    assert shape_probe(model, dense, shapes, n_fit, tower_features(model, dense.pixel_values,
                                                                   dense.resized_sizes)[0]) == after
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first
    majority = max(shapes[n_fit:].count(s) for s in set(shapes)) / (len(shapes) - n_fit)
    assert after > before + 0.1, (before, after)
    assert after > majority + 0.08, (majority, after)  # observed 0.58 against 0.46
    assert not any(p.requires_grad for p in model.vision_tower.parameters())  # left frozen

    # saved as a plain CLIP folder, found again only with the same fingerprint
    folder = save_pretrained_tower(model.vision_tower, tmp_path / "tower", result, {"a": 1})
    assert cached_result(folder, {"a": 1}) is not None
    assert cached_result(folder, {"a": 2}) is None
    from pixellm.train.base import load_clip

    _, clip = load_clip(folder)
    for (name, p), q in zip(model.vision_tower.state_dict().items(), clip.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_random_preset_starts_from_vision_weights(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pixellm.errors import ConfigError
    from pixellm.train.config import TrainConfig
    from pixellm.train.setup import build_model

    cfg = PixelLMConfig.from_preset("tiny-demo")
    tower = CLIPVisionModel(CLIPVisionConfig(**cfg.vision_config.to_dict()))
    tower.save_pretrained(str(tmp_path / "tower"))
    train_cfg = TrainConfig(preset="tiny-demo", vision_weights=str(tmp_path / "tower"), trainable="all_but_vision")
    train_cfg.lora.enabled = False
    model, _ = build_model(train_cfg)
    for (name, p), q in zip(model.vision_tower.state_dict().items(), tower.state_dict().values()):
        assert torch.equal(p, q), name
    assert not any(p.requires_grad for p in model.vision_tower.parameters())  # CLIP stays frozen

    other = CLIPVisionConfig(**{**cfg.vision_config.to_dict(), "hidden_size": 64, "intermediate_size": 128})
    CLIPVisionModel(other).save_pretrained(str(tmp_path / "other"))
    train_cfg.vision_weights = str(tmp_path / "other")
    with pytest.raises(ConfigError, match="vision hidden_size is 64"):
        build_model(train_cfg)


def test_cli_scores_the_random_tower_only_when_asked(tmp_path, capsys):
    import json

    from pixellm.cli import main

    write_synth(tmp_path / "d", {"train": 40}, seed=0)
    for flag, out in (([], "plain"), (["--probe-random-tower"], "baseline")):
        assert main(["vision-pretrain", "--data", str(tmp_path / "d" / "train.json"), "--out", str(tmp_path / out),
                     "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--no-progress", *flag]) == 0
        probe = json.loads((tmp_path / out / "vision_pretrain.json").read_text())["summary"]["shape_probe"]
        assert (probe["random_tower"] is not None) == bool(flag)
        assert 0.0 <= probe["pretrained_tower"] <= 1.0
    assert "majority class" in capsys.readouterr().out
