"""PixelLMForCausalLM end to end on small random configs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch, small_config

from pixellm.errors import ConfigError, InputError
from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE, PixelLMConfig
from pixellm.model.modeling_pixellm import PixelLMForCausalLM


def build(cfg=None, seed=0, **overrides):
    torch.manual_seed(seed)
    return PixelLMForCausalLM(cfg or small_config(**overrides))


def run(model, batch, **kw):
    inputs = {k: v for k, v in batch.items() if k not in kw}
    return model(**inputs, **kw)


# -- presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, hidden, neck, fcs, proj",
    [("pixellm-7b", 4096, 1_639_424, 17_830_144, 41_955_328),
     ("pixellm-13b", 5120, 1_901_568, 27_530_496, 62_929_920)],
)
def test_released_presets_on_meta(name, hidden, neck, fcs, proj):
    cfg = PixelLMConfig.from_preset(name)
    with torch.device("meta"):
        model = PixelLMForCausalLM(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.mask_decoder) == 7_571_940
    assert count(model.image_feature_neck) == neck
    assert count(model.text_hidden_fcs) == fcs
    assert count(model.mm_projector) == count(model.out_mm_projector) == proj
    assert model.language_model.config.hidden_size == hidden
    assert cfg.num_codebook_tokens == 6 and cfg.num_image_tokens == 256 and cfg.vision_grid == 32
    # presets carry sizes, not token ids: the ids come from a tokenizer (pixellm.build)
    assert cfg.codebook_token_ids is None and cfg.text_config.vocab_size == 32000


def test_released_layout_comes_out_of_the_one_step():
    """LLaMA's tokenizer (32000 tokens) + the released sizes -> ids 32000..32007, vocabulary 32008."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pixellm.build import build_processor

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    llama_like = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                         eos_token="</s>", pad_token="<unk>")
    for name in ("pixellm-7b", "pixellm-13b"):
        cfg = PixelLMConfig.from_preset(name)
        processor = build_processor(cfg, llama_like)
        assert cfg.codebook_token_ids == list(range(32000, 32006)) == processor.codebook_token_ids
        assert (cfg.im_start_token_id, cfg.im_end_token_id) == (32006, 32007)
        assert cfg.text_config.vocab_size == 32008 == len(llama_like)


def test_preset_sizes_validate_before_any_ids_exist():
    from pixellm.build import build_processor

    cfg = PixelLMConfig.from_preset("tiny", num_tokens_per_scale=2)
    assert cfg.codebook_token_ids is None and cfg.num_codebook_tokens == 4
    build_processor(cfg)
    assert len(cfg.codebook_token_ids) == 4 and cfg.text_config.vocab_size == 1024 + 4 + 2
    shared = PixelLMConfig.from_preset("tiny", num_tokens_per_scale=2, shared_codebook=True)
    assert shared.num_codebook_tokens == 2
    with pytest.raises(InputError, match="pixellm.build"):
        PixelLMForCausalLM(shared).codebook_token_ids  # noqa: B018


def test_tiny_preset_is_small_and_runs():
    from pixellm.build import build_pixellm

    model, _ = build_pixellm("tiny")
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 2e7
    out = run(model, make_batch(cfg, targets=(1, 3), sizes=((64, 64), (48, 64)), resized=((64, 64), (48, 64))))
    assert [tuple(m.shape) for m in out.pred_masks] == [(1, 64, 64), (3, 48, 64)]
    assert torch.isfinite(out.loss)


def test_tiny_demo_starts_its_llm_at_width_scale_and_reads_one_scale():
    """The demo's 128-wide LLM is initialised at 1/sqrt(width), not LLaMA's 0.02 (which the released
    presets keep; their weights are loaded anyway), and its mask decoder reads one scale."""
    from pixellm.build import build_pixellm

    model, _ = build_pixellm("tiny-demo")
    llm = model.language_model
    for name, p in llm.named_parameters():
        if p.dim() == 2:  # embeddings and every projection
            assert p.std().item() == pytest.approx(128**-0.5, rel=0.1), name
    assert PixelLMConfig.from_preset("pixellm-7b").text_config.initializer_range == 0.02
    assert PixelLMConfig.from_preset("tiny").text_config.initializer_range == 0.02
    # one scale, the tower's last layer: one two-way transformer and 3 codebook tokens a target
    # (the released presets and `tiny` keep two scales)
    assert model.config.vision_select_layers == [-1] and model.config.num_codebook_tokens == 3
    assert len(model.mask_decoder.transformer) == 1
    for preset in ("tiny", "pixellm-7b"):
        cfg = PixelLMConfig.from_preset(preset)
        assert cfg.num_scales == 2 and cfg.num_codebook_tokens == 6, preset


def test_unknown_preset_and_bad_config():
    with pytest.raises(ConfigError, match="unknown preset"):
        PixelLMConfig.from_preset("nope")
    with pytest.raises(ConfigError, match="token_fusion"):
        small_config(token_fusion="max")
    cfg = small_config()
    with pytest.raises(ConfigError, match="2 ids for 6 codebook tokens"):
        cfg.set_token_ids(cfg.codebook_token_ids[:2], cfg.im_start_token_id, cfg.im_end_token_id)
    saved = cfg.to_dict()
    saved["text_config"]["vocab_size"] = 1000  # a config.json whose ids lie beyond its vocabulary
    with pytest.raises(ConfigError, match="do not all lie in the vocabulary of 1000"):
        PixelLMConfig.from_dict(saved)


# -- forward -----------------------------------------------------------------------------------
def test_forward_shapes_mixed_sizes_and_targets():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg, targets=(2, 0, 3), sizes=((80, 50), (45, 96), (64, 64)),
                       resized=((64, 40), (30, 64), (64, 64)))
    out = run(model, batch)
    assert out.num_targets == [2, 0, 3]
    assert [tuple(m.shape) for m in out.pred_masks] == [(2, 80, 50), (0, 45, 96), (3, 64, 64)]
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert out.seg_embeddings.shape == (5, cfg.num_scales, cfg.decoder_dim)
    assert torch.allclose(out.loss, out.ce_loss + 2.0 * out.ref_loss + 0.5 * out.dice_loss)
    assert torch.allclose(out.mask_loss, 2.0 * out.ref_loss + 0.5 * out.dice_loss)


def test_batch_without_any_target_still_backpropagates():
    cfg = small_config()
    model = build(cfg)
    model.configure_trainable()
    out = run(model, make_batch(cfg, targets=(0, 0)))
    assert out.ref_loss.item() == 0 and out.dice_loss.item() == 0
    out.loss.backward()
    assert model.mask_decoder.level_embed.weight.grad is not None


def test_masks_of_a_sample_do_not_depend_on_other_samples():
    cfg = small_config()
    model = build(cfg).eval()
    batch = make_batch(cfg, targets=(2, 1))
    with torch.no_grad():
        both = run(model, batch, labels=None, gt_masks=None)
        one = model(**{k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in batch.items()
                       if k not in ("labels", "gt_masks")})
    n = one.logits.shape[1]
    assert torch.allclose(both.pred_masks[0], one.pred_masks[0], atol=1e-5)
    assert torch.allclose(both.logits[0, :n], one.logits[0], atol=1e-5)


def test_seg_embedding_uses_hidden_state_before_each_token():
    cfg = small_config()
    model = build(cfg).eval()
    batch = make_batch(cfg, targets=(1,), sizes=((64, 64),), resized=((64, 64),))
    groups, incomplete = model.codebook_positions(batch["input_ids"])
    assert incomplete == [0]
    pos = groups[0][0]
    assert batch["input_ids"][0, pos].tolist() == cfg.codebook_token_ids
    with torch.no_grad():
        out = run(model, batch, labels=None, gt_masks=None)
        hidden = model.language_model.get_decoder()(
            inputs_embeds=model.embed_inputs(batch["input_ids"], model.encode_images(batch["pixel_values"]).llm_tokens),
            attention_mask=batch["attention_mask"],
            position_ids=model.position_ids_from_mask(batch["attention_mask"]),
        ).last_hidden_state
        expected = model.seg_embeddings(hidden[0, pos - 1][None])
    assert torch.allclose(out.seg_embeddings, expected, atol=1e-5)


def test_codebook_positions_reports_incomplete_groups():
    cfg = small_config()
    model = build(cfg)
    s = cfg.codebook_token_ids
    ids = torch.tensor([[1] + s + [5] + s[:4] + [6] + s + s[2:] + [2]])
    groups, incomplete = model.codebook_positions(ids)
    assert groups[0].shape == (2, 6) and incomplete == [2]


# -- losses and training surface ---------------------------------------------------------------
@pytest.mark.parametrize("from_tokens", [False, True])
def test_gradients_reach_trainable_parts_and_no_frozen_ones(from_tokens):
    cfg = small_config(pixel_detail_channels=8, pixel_detail_from_tokens=from_tokens)
    model = build(cfg)
    model.configure_trainable()
    out = run(model, make_batch(cfg, targets=(2, 1)))
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("vision_tower.", "language_model.model.layers", "language_model.model.norm")):
            assert not p.requires_grad and p.grad is None, name
        if name.startswith("mask_decoder.iou_prediction_head"):
            assert p.grad is None, name
    trainable_roots = ["mm_projector", "out_mm_projector", "image_feature_neck", "text_hidden_fcs",
                       "mask_decoder.transformer", "token_fusion.weights", "mask_fusion.gamma", "detail",
                       "language_model.model.embed_tokens", "language_model.lm_head"]
    for root in trainable_roots:
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(root)]
        assert grads and all(g is not None for g in grads), root
        assert any(g.abs().sum() > 0 for g in grads), root


def test_refinement_alpha_changes_loss_only_with_overlap():
    cfg = small_config()
    batch = make_batch(cfg, targets=(2,), sizes=((64, 64),), resized=((64, 64),))
    losses = {}
    for alpha in (1.0, 2.0, 5.0):
        model = build(small_config(refinement_alpha=alpha))
        losses[alpha] = run(model, batch).ref_loss.item()
    # random init: two masks of one answer overlap somewhere, so alpha must matter
    assert losses[1.0] < losses[2.0] < losses[5.0]
    single = make_batch(cfg, targets=(1,), sizes=((64, 64),), resized=((64, 64),))
    one = [run(build(small_config(refinement_alpha=a)), single).ref_loss.item() for a in (1.0, 3.0)]
    assert one[0] == pytest.approx(one[1])


@pytest.mark.parametrize(
    "override",
    [dict(token_fusion="linear"), dict(mask_readout="mean"), dict(shared_codebook=True),
     dict(pixel_detail_channels=8)],
)
def test_variant_switches_change_behaviour(override):
    cfg = small_config()
    variant = small_config(**override)
    base_out = run(build(cfg).eval(), make_batch(cfg, targets=(2,), sizes=((64, 64),), resized=((64, 64),)),
                   labels=None, gt_masks=None)
    var_model = build(variant).eval()
    var_out = run(var_model, make_batch(variant, targets=(2,), sizes=((64, 64),), resized=((64, 64),)),
                  labels=None, gt_masks=None)
    assert var_out.pred_masks[0].shape == base_out.pred_masks[0].shape
    assert not torch.allclose(var_out.pred_masks[0], base_out.pred_masks[0], atol=1e-4)


def test_weighted_sum_fusion_starts_at_uniform_weights_and_is_trainable():
    model = build(small_config())
    assert torch.allclose(model.token_fusion.weights, torch.full((2, 3), 1 / 3))
    assert torch.allclose(model.mask_fusion.gamma, torch.full((2,), 0.5))
    frozen = build(small_config(learnable_fusion_weights=False))
    frozen.configure_trainable()
    assert not frozen.token_fusion.weights.requires_grad and not frozen.mask_fusion.gamma.requires_grad
    # shared codebook: one group of N tokens feeds every scale
    shared = build(small_config(shared_codebook=True))
    assert len(shared.codebook_token_ids) == 3
    emb = shared.seg_embeddings(torch.randn(2, 3, 64))
    assert emb.shape == (2, 2, 32) and torch.equal(emb[:, 0], emb[:, 1])


def test_qwen2_language_model_works():
    cfg = small_config(text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        vocab_size=TINY_VOCAB_SIZE))
    model = build(cfg)
    assert type(model.language_model).__name__ == "Qwen2ForCausalLM"
    out = run(model, make_batch(cfg))
    assert [tuple(m.shape) for m in out.pred_masks] == [(2, 80, 50), (0, 45, 96)]
    out.loss.backward()


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    cfg = small_config(pixel_detail_channels=8)
    model = build(cfg).eval()
    with torch.no_grad():
        model.token_fusion.weights.add_(0.1)  # non-default fusion weights must be saved too
        model.mask_fusion.gamma.mul_(1.5)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = PixelLMForCausalLM.from_pretrained(tmp_path).eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        a = run(model, batch)
        b = run(loaded, batch)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.pred_masks, b.pred_masks))
    assert loaded.config.codebook_token_ids == cfg.codebook_token_ids


# -- bad input ---------------------------------------------------------------------------------
def test_mask_count_not_matching_codebook_groups_is_a_clear_error():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg, targets=(2, 0))
    batch["gt_masks"] = [batch["gt_masks"][0][:1], batch["gt_masks"][1]]
    with pytest.raises(InputError, match="sample 0: 2 codebook groups"):
        run(model, batch)


def test_wrong_image_tensor_shape_is_a_clear_error():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg)
    batch["pixel_values"] = torch.randn(2, 3, 48, 48)
    with pytest.raises(InputError, match=r"pixel_values must be B x 3 x 64 x 64"):
        run(model, batch)
    batch = make_batch(cfg)
    batch["input_ids"][1, 5] = 3  # one image placeholder missing
    with pytest.raises(InputError, match="sample 1: 15 image placeholder tokens, expected 16"):
        run(model, batch)


def test_check_value_of_spec_section_3():
    from pixellm.losses import mask_losses

    out = mask_losses(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), [1])
    assert out["ref"].item() == pytest.approx(math.log(2), abs=1e-4)
    assert out["total"].item() == pytest.approx(1.553, abs=1e-3)


def test_tiny_model_and_processor_round_trip_in_one_folder(tmp_path):
    import numpy as np

    from pixellm.build import build_pixellm
    from pixellm.processing.collate import collate
    from pixellm.processing.processing_pixellm import PixelLMProcessor

    model, processor = build_pixellm("tiny", seed=0)
    model.eval()
    assert processor.codebook_token_ids == model.config.codebook_token_ids
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)
    masks = rng.random((2, 40, 64)) > 0.5
    example = processor.encode_example(image, "Segment the red circle and the blue square.",
                                       "the red circle {seg} and the blue square {seg}.", masks)
    loaded_proc = PixelLMProcessor.from_pretrained(tmp_path)
    again = loaded_proc.encode_example(image, "Segment the red circle and the blue square.",
                                       "the red circle {seg} and the blue square {seg}.", masks)
    assert torch.equal(example["input_ids"], again["input_ids"])
    assert torch.equal(example["labels"], again["labels"])
    batch = collate([example], processor.pad_token_id)
    batch.pop("skipped")
    loaded = PixelLMForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_masks[0], b.pred_masks[0])
    assert a.pred_masks[0].shape == (2, 40, 64) and torch.isfinite(a.loss)


def test_training_mode_without_full_logits_gives_the_same_losses():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg, targets=(2, 1))
    full = run(model, batch)
    lean = run(model, batch, return_logits=False)
    assert lean.logits is None
    torch.testing.assert_close(lean.ce_loss, full.ce_loss)
    torch.testing.assert_close(lean.loss, full.loss)


def test_decoder_features_only_for_images_with_targets_give_the_same_masks_and_grads():
    """``forward`` computes the neck and detail features only for images with a target (the
    others have nothing to decode): masks, losses and gradients are those of the full pass."""
    cfg = small_config(pixel_detail_channels=4)
    model = build(cfg)
    model.configure_trainable()
    size = ((64, 64),) * 4
    batch = make_batch(cfg, targets=(2, 0, 1, 0), sizes=size, resized=size)
    out = run(model, batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # every image's decoder features, as generate / predict compute them
    full = model.encode_images(batch["pixel_values"], batch["resized_sizes"], batch["original_sizes"])
    part = model.encode_images(batch["pixel_values"], batch["resized_sizes"], batch["original_sizes"],
                               decoder_rows=[0, 2])
    assert torch.allclose(part.decoder[[0, 2]], full.decoder[[0, 2]], atol=1e-6)
    assert part.decoder[[1, 3]].abs().sum() == 0 and part.detail[[1, 3]].abs().sum() == 0
    assert torch.allclose(part.detail[[0, 2]], full.detail[[0, 2]], atol=1e-6)
    with torch.no_grad():
        one = run(model, {k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in batch.items()})
    assert torch.allclose(out.pred_masks[0], one.pred_masks[0], atol=1e-5)
    assert set(grads) >= {"image_feature_neck.0.weight", "detail.stem.0.weight"}
    run(model, batch).loss.backward()
    for n, g in grads.items():
        assert torch.allclose(model.get_parameter(n).grad, g, atol=1e-6), n


def test_full_size_images_decode_and_score_in_one_batch_with_the_per_image_numbers(monkeypatch):
    """When every image is S x S, ``predict_masks`` resizes all masks at once and
    ``mask_loss_terms`` scores them in one call: the masks, losses and gradients of the per-image
    steps (forced here), for a batch with an image that has no target."""
    from pixellm.model.modeling_pixellm import ImageFeatures

    cfg = small_config(pixel_detail_channels=4)
    model = build(cfg)
    model.configure_trainable()
    size = ((64, 64),) * 3
    batch = make_batch(cfg, targets=(2, 0, 3), sizes=size, resized=size)

    def losses_and_grads():
        model.zero_grad()
        out = run(model, batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    batched, grads = losses_and_grads()
    with torch.no_grad():  # the batched path ran
        assert model.encode_images(batch["pixel_values"], batch["resized_sizes"]).all_full_size(cfg.image_size)
    monkeypatch.setattr(ImageFeatures, "all_full_size", lambda self, size: False)
    # mask_loss_terms' per-sample path runs when the masks differ in size; score per sample here
    per_image, grads_ref = losses_and_grads()
    assert [m.shape for m in batched.pred_masks] == [(2, 64, 64), (0, 64, 64), (3, 64, 64)]
    for a, b in zip(batched.pred_masks, per_image.pred_masks):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    from pixellm.losses import dice_per_mask, refinement_bce_per_mask

    preds = [p for p in per_image.pred_masks if p.shape[0]]
    gts = [g.float() for g in batch["gt_masks"] if g is not None and g.shape[0]]
    alpha = cfg.refinement_alpha
    ref = torch.cat([refinement_bce_per_mask(p, g, [p.shape[0]], alpha) for p, g in zip(preds, gts)]).mean()
    dice = torch.cat([dice_per_mask(p, g) for p, g in zip(preds, gts)]).mean()
    torch.testing.assert_close(batched.ref_loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(batched.dice_loss, dice, rtol=1e-6, atol=1e-7)
    assert set(grads) == set(grads_ref) and "detail.stem.0.weight" in grads
    for n, g in grads.items():
        torch.testing.assert_close(g, grads_ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_mask_losses_of_masks_of_different_sizes_are_scored_per_sample():
    cfg = small_config()
    model = build(cfg)
    preds = [torch.randn(2, 8, 8), torch.randn(0, 4, 4), torch.randn(1, 4, 6)]
    gts = [torch.rand(2, 8, 8) > 0.5, torch.zeros(0, 4, 4), torch.rand(1, 4, 6) > 0.5]
    ref, dice = model.mask_loss_terms(preds, gts)
    from pixellm.losses import dice_per_mask, refinement_bce_per_mask

    alpha = cfg.refinement_alpha
    want_ref = torch.cat([refinement_bce_per_mask(preds[i], gts[i].float(), [preds[i].shape[0]], alpha)
                          for i in (0, 2)]).mean()
    want_dice = torch.cat([dice_per_mask(preds[i], gts[i].float()) for i in (0, 2)]).mean()
    torch.testing.assert_close(ref, want_ref)
    torch.testing.assert_close(dice, want_dice)


def test_answer_start_weights_mark_the_first_token_of_each_supervised_run():
    from pixellm.model.modeling_pixellm import answer_start_weights

    supervised = torch.tensor([[False, True, True, False, True, True, True],  # two answers (packed turns)
                               [True, True, False, False, False, False, False]])
    weights = answer_start_weights(supervised, 4.0)
    assert weights.tolist() == [4.0, 1.0, 4.0, 1.0, 1.0, 4.0, 1.0]


def test_answer_start_loss_weight_scales_the_first_answer_token_only():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg, targets=(2, 1))
    plain = run(model, batch)
    model.config.answer_start_loss_weight = 3.0
    weighted = run(model, batch)
    # the same cross-entropy per token, recomputed from the logits: answer starts count 3 times
    labels = batch["labels"][:, 1:]
    supervised = labels != -100
    per_token = torch.nn.functional.cross_entropy(plain.logits[:, :-1][supervised].float(), labels[supervised],
                                                  reduction="none")
    starts = supervised & torch.cat([torch.ones_like(supervised[:, :1]), ~supervised[:, :-1]], dim=1)
    expected = (per_token + 2.0 * per_token * starts[supervised]).sum() / per_token.numel()
    torch.testing.assert_close(plain.ce_loss, per_token.mean())
    torch.testing.assert_close(weighted.ce_loss, expected)
    assert weighted.ce_loss > plain.ce_loss
    torch.testing.assert_close(weighted.loss - weighted.ce_loss, plain.loss - plain.ce_loss)  # masks untouched
    with pytest.raises(ConfigError, match="answer_start_loss_weight"):
        small_config(answer_start_loss_weight=-1.0)
    # the demo's preset weights answer starts; the released presets keep the plain mean
    assert PixelLMConfig.from_preset("tiny-demo").answer_start_loss_weight == 3.0
    assert PixelLMConfig.from_preset("pixellm-7b").answer_start_loss_weight == 1.0


def test_detail_path_decodes_each_patch_token_to_its_own_pixels():
    from pixellm.model.detail import PixelDetailPath

    torch.manual_seed(0)
    path = PixelDetailPath(4, 16, dilations=(), token_dim=12, patch_size=8)  # no blocks: no mixing
    pixels, tokens = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 12)  # a 4 x 4 patch grid
    base = path.features(pixels, tokens)
    bumped = tokens.clone()
    bumped[1, 6] = torch.randn(12)  # row 1, column 2 of image 1
    changed = (path.features(pixels, bumped) - base).abs().sum(1) > 1e-6
    expected = torch.zeros(2, 32, 32, dtype=torch.bool)
    expected[1, 8:16, 16:24] = True
    assert torch.equal(changed, expected)
    with pytest.raises(ValueError, match="pass tokens"):
        path.features(pixels)
    with pytest.raises(ConfigError, match="pixel_detail_from_tokens"):
        small_config(pixel_detail_from_tokens=True)
    # the demo's preset reads the tokens; the released presets have no detail path at all
    assert PixelLMConfig.from_preset("tiny-demo").pixel_detail_from_tokens
    assert not PixelLMConfig.from_preset("pixellm-7b").pixel_detail_from_tokens


def test_detail_path_activation_is_configurable():
    from torch import nn

    gelu, relu = build(small_config(pixel_detail_channels=8)), build(small_config(pixel_detail_channels=8,
                                                                                    pixel_detail_act="relu"))
    acts = [type(m) for m in relu.detail.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    assert acts == [nn.ReLU] * 5  # after the stem and in each of the 4 blocks
    assert not any(isinstance(m, nn.ReLU) for m in gelu.detail.modules())
    relu.load_state_dict(gelu.state_dict())  # same weights: only the activation differs
    pixels = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(gelu.detail.features(pixels), relu.detail.features(pixels), atol=1e-4)
    with pytest.raises(ConfigError, match="pixel_detail_act"):
        small_config(pixel_detail_act="tanh")
    # the demo's preset takes the cheaper ReLU; GELU stays the default
    assert PixelLMConfig.from_preset("tiny-demo").pixel_detail_act == "relu"
    assert PixelLMConfig.from_preset("tiny").pixel_detail_act == "gelu"


def test_detail_path_hands_its_blocks_channels_last_gradients():
    """The per-target gather returns a contiguous gradient; the path converts it to the
    channels-last layout of its activations (a GELU backward on mixed layouts is ~5x slower)
    without changing any value."""
    from pixellm.model import detail as detail_module
    from pixellm.model.detail import PixelDetailPath

    torch.manual_seed(0)
    path = PixelDetailPath(4, 16, dilations=(1, 2))
    pixels = torch.randn(3, 3, 16, 16)
    layouts = []
    path.blocks[-1].register_full_backward_hook(
        lambda mod, grad_in, grad_out: layouts.append(grad_out[0].is_contiguous(memory_format=torch.channels_last)))

    def grads():
        path.zero_grad()
        feats = path.features(pixels)
        gathered = feats[torch.tensor([2, 0, 2])]  # as decode_masks gathers per target
        path(gathered, torch.randn(3, 16, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        return {n: p.grad.clone() for n, p in path.named_parameters()}

    converted = grads()
    assert layouts == [True]
    apply = detail_module._ChannelsLastGrad.apply
    try:
        detail_module._ChannelsLastGrad.apply = lambda x: x
        plain = grads()
    finally:
        detail_module._ChannelsLastGrad.apply = apply
    assert layouts == [True, False]  # without it the blocks would get the gather's layout
    for name in plain:
        torch.testing.assert_close(converted[name], plain[name], rtol=1e-5, atol=1e-6)
