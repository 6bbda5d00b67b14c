"""Released checkpoint layout (SPEC section 9) maps onto our model with no missing/unexpected keys."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

from pixellm.errors import InputError
from pixellm.model.modeling_pixellm import PixelLMForCausalLM
from pixellm.model.released import convert_released_state_dict, load_released_state_dict
from pixellm.model.vision import interpolate_position_embeddings


def released_layout(h: int, v: int, vocab: int, layers: int, inter: int, c: int = 256) -> dict[str, tuple]:
    """Key -> shape of a released ``hf_model`` state dict, written from SPEC section 9's table."""
    keys: dict[str, tuple] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,),
                              "lm_head.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in "qkvo":
            keys[p + f"self_attn.{n}_proj.weight"] = (h, h)
        keys[p + "mlp.gate_proj.weight"] = keys[p + "mlp.up_proj.weight"] = (inter, h)
        keys[p + "mlp.down_proj.weight"] = (h, inter)
        keys[p + "input_layernorm.weight"] = keys[p + "post_attention_layernorm.weight"] = (h,)
    for proj in ("mm_projector", "out_mm_projector"):
        keys.update({f"model.{proj}.0.weight": (2 * h, v), f"model.{proj}.0.bias": (2 * h,),
                     f"model.{proj}.2.weight": (h, 2 * h), f"model.{proj}.2.bias": (h,)})
    keys.update({"model.text_hidden_fcs.0.0.weight": (h, h), "model.text_hidden_fcs.0.0.bias": (h,),
                 "model.text_hidden_fcs.0.2.weight": (c, h), "model.text_hidden_fcs.0.2.bias": (c,)})
    keys.update({"model.image_feature_neck.0.weight": (c, h, 1, 1), "model.image_feature_neck.2.weight": (c, c, 3, 3)})
    for i in (1, 3):
        keys[f"model.image_feature_neck.{i}.weight"] = keys[f"model.image_feature_neck.{i}.bias"] = (c,)
    pe = "model.prompt_encoder."
    keys.update({pe + "pe_layer.positional_encoding_gaussian_matrix": (2, c // 2), pe + "no_mask_embed.weight": (1, c),
                 pe + "not_a_point_embed.weight": (1, c), pe + "mask_downscaling.0.weight": (4, 1, 2, 2)})
    for i in range(4):
        keys[pe + f"point_embeddings.{i}.weight"] = (1, c)
    md = "model.mask_decoder."

    def attn(prefix: str, inner: int) -> None:
        for n in "qkv":
            keys[prefix + f"{n}_proj.weight"], keys[prefix + f"{n}_proj.bias"] = (inner, c), (inner,)
        keys[prefix + "out_proj.weight"], keys[prefix + "out_proj.bias"] = (c, inner), (c,)

    for t in range(2):
        for blk in range(2):
            p = f"{md}transformer.{t}.layers.{blk}."
            attn(p + "self_attn.", c)
            attn(p + "cross_attn_token_to_image.", c // 2)
            attn(p + "cross_attn_image_to_token.", c // 2)
            for n in range(1, 5):
                keys[p + f"norm{n}.weight"] = keys[p + f"norm{n}.bias"] = (c,)
            keys.update({p + "mlp.lin1.weight": (2048, c), p + "mlp.lin1.bias": (2048,),
                         p + "mlp.lin2.weight": (c, 2048), p + "mlp.lin2.bias": (c,)})
        attn(f"{md}transformer.{t}.final_attn_token_to_image.", c // 2)
        keys[f"{md}transformer.{t}.norm_final_attn.weight"] = keys[f"{md}transformer.{t}.norm_final_attn.bias"] = (c,)
    keys.update({md + "iou_token.weight": (1, c), md + "mask_tokens.weight": (4, c), md + "level_embed.weight": (2, c),
                 md + "output_upscaling.0.weight": (c, c // 8, 2, 2), md + "output_upscaling.0.bias": (c // 8,),
                 md + "output_upscaling.1.weight": (c // 8,), md + "output_upscaling.1.bias": (c // 8,),
                 md + "upsample_2x.0.weight": (c, c, 2, 2), md + "upsample_2x.0.bias": (c,),
                 md + "upsample_2x.1.weight": (c,), md + "upsample_2x.1.bias": (c,),
                 md + "pe1.positional_encoding_gaussian_matrix": (2, c // 2)})
    for i in range(4):
        for j in range(2):
            keys[md + f"output_hypernetworks_mlps.{i}.layers.{j}.weight"] = (c, c)
            keys[md + f"output_hypernetworks_mlps.{i}.layers.{j}.bias"] = (c,)
        keys[md + f"output_hypernetworks_mlps.{i}.layers.2.weight"] = (c // 8, c)
        keys[md + f"output_hypernetworks_mlps.{i}.layers.2.bias"] = (c // 8,)
    for j in range(2):
        keys[md + f"iou_prediction_head.layers.{j}.weight"], keys[md + f"iou_prediction_head.layers.{j}.bias"] = (256, 256), (256,)
    keys[md + "iou_prediction_head.layers.2.weight"], keys[md + "iou_prediction_head.layers.2.bias"] = (4, 256), (4,)
    return keys


def released_config():
    # SPEC sizes for everything non-LLM except CLIP width; a 2-layer LLaMA with H = 64.
    return small_config(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=100),
        decoder_dim=256, decoder_heads=8, decoder_mlp_dim=2048,
    )


def test_table_reproduces_the_released_decoder_parameter_count():
    layout = released_layout(64, 32, 100, 2, 128)
    # pe1's Gaussian matrix is a buffer, not a parameter
    n = sum(torch.Size(s).numel() for k, s in layout.items()
            if k.startswith("model.mask_decoder.") and "gaussian" not in k)
    assert n == 7_571_940


def test_released_state_dict_loads_with_no_missing_or_unexpected_keys():
    torch.manual_seed(0)
    model = PixelLMForCausalLM(released_config())
    g = torch.Generator().manual_seed(1)
    released = {k: torch.randn(s, generator=g) for k, s in released_layout(64, 32, 100, 2, 128).items()}
    dropped = load_released_state_dict(model, released)
    assert sorted(dropped) == sorted(k for k in released if "point" in k or "mask_downscaling" in k)
    own = model.state_dict()
    converted, _ = convert_released_state_dict(released)
    for key, value in converted.items():
        assert torch.equal(own[key], value), key
    # fusion weights (absent from the release) keep the released effective values 1/N and 1/L
    assert torch.allclose(model.token_fusion.weights, torch.full((2, 3), 1 / 3))
    assert torch.allclose(model.mask_fusion.gamma, torch.full((2,), 0.5))


def test_released_state_dict_with_wrong_or_missing_keys_is_rejected():
    model = PixelLMForCausalLM(released_config())
    layout = released_layout(64, 32, 100, 2, 128)
    released = {k: torch.zeros(s) for k, s in layout.items()}
    missing = dict(released)
    del missing["model.mask_decoder.level_embed.weight"]
    with pytest.raises(InputError, match="missing"):
        load_released_state_dict(model, missing)
    extra = dict(released, **{"model.mask_decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="unexpected"):
        load_released_state_dict(model, extra)
    wrong = dict(released, **{"model.mask_decoder.level_embed.weight": torch.zeros(3, 256)})
    with pytest.raises(InputError, match="shape mismatch"):
        load_released_state_dict(model, wrong)


def test_released_position_interpolation_treats_last_row_as_cls():
    table = torch.randn(1 + 9, 4)
    same = interpolate_position_embeddings(table, 3, "released")
    assert torch.equal(same, table)  # nothing to do at the native grid
    correct = interpolate_position_embeddings(table, 6, "correct")
    released = interpolate_position_embeddings(table, 6, "released")
    assert correct.shape == released.shape == (37, 4)
    assert torch.equal(correct[0], table[0]) and torch.equal(released[0], table[-1])
    assert not torch.allclose(correct[1:], released[1:])
    # the released grid is built from rows 0..8 (real CLS + 8 patches)
    expected = torch.nn.functional.interpolate(table[:9].reshape(1, 3, 3, 4).permute(0, 3, 1, 2), size=(6, 6),
                                               mode="bicubic", align_corners=False)
    assert torch.allclose(released[1:], expected.permute(0, 2, 3, 1).reshape(36, 4), atol=1e-6)
