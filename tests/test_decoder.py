"""Pixel decoder: released layout, shapes, Algorithm 1 behaviour, gradients."""

from __future__ import annotations

import math
import re

import pytest
import torch

from pixellm.errors import InputError
from pixellm.model.common import MLP, LayerNorm2d
from pixellm.model.mask_decoder import MultiScaleMaskDecoder
from pixellm.model.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from pixellm.model.transformer import Attention

C = 64  # tiny decoder: C=64, 4 heads, MLP 256


def tiny_decoder(num_scales: int = 2, readout: str = "first", seed: int = 0) -> MultiScaleMaskDecoder:
    torch.manual_seed(seed)
    return MultiScaleMaskDecoder(
        transformer_dim=C, num_scales=num_scales, num_heads=4, mlp_dim=256, iou_head_hidden_dim=C, readout=readout
    )


def inputs(t: int, num_scales: int, h: int = 4, w: int = 6, seed: int = 1, expand: bool = True):
    """Image features as the model passes them: one image expanded to T targets."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, num_scales, C, h, w, generator=g)
    feats = feats.expand(t, -1, -1, -1, -1) if expand else feats.repeat(t, 1, 1, 1, 1)
    seg = torch.randn(t, num_scales, C, generator=g)
    torch.manual_seed(seed)
    prompt = PromptEncoder(C)
    return feats, seg, prompt.get_dense_pe(h, w), prompt.dense_embedding(h, w)


def test_default_parameter_count_matches_release():
    assert sum(p.numel() for p in MultiScaleMaskDecoder().parameters()) == 7_571_940


def released_keys() -> dict[str, tuple[int, ...]]:
    """Expected `model.mask_decoder.*` / `model.prompt_encoder.*` keys and shapes, from docs/architecture.md "Released checkpoint layout"."""
    keys: dict[str, tuple[int, ...]] = {}

    def linear(prefix: str, out_dim: int, in_dim: int) -> None:
        keys[f"{prefix}.weight"] = (out_dim, in_dim)
        keys[f"{prefix}.bias"] = (out_dim,)

    def norm(prefix: str, dim: int) -> None:
        keys[f"{prefix}.weight"] = (dim,)
        keys[f"{prefix}.bias"] = (dim,)

    def cross_attn(prefix: str) -> None:
        for p in "qkv":
            linear(f"{prefix}.{p}_proj", 128, 256)
        linear(f"{prefix}.out_proj", 256, 128)

    for s in (0, 1):
        for i in (0, 1):
            layer = f"transformer.{s}.layers.{i}"
            for p in ("q", "k", "v", "out"):
                linear(f"{layer}.self_attn.{p}_proj", 256, 256)
            cross_attn(f"{layer}.cross_attn_token_to_image")
            cross_attn(f"{layer}.cross_attn_image_to_token")
            for n in range(1, 5):
                norm(f"{layer}.norm{n}", 256)
            linear(f"{layer}.mlp.lin1", 2048, 256)
            linear(f"{layer}.mlp.lin2", 256, 2048)
        cross_attn(f"transformer.{s}.final_attn_token_to_image")
        norm(f"transformer.{s}.norm_final_attn", 256)
    keys["iou_token.weight"] = (1, 256)
    keys["mask_tokens.weight"] = (4, 256)
    keys["level_embed.weight"] = (2, 256)
    keys["output_upscaling.0.weight"] = (256, 32, 2, 2)
    keys["output_upscaling.0.bias"] = (32,)
    norm("output_upscaling.1", 32)
    keys["upsample_2x.0.weight"] = (256, 256, 2, 2)
    keys["upsample_2x.0.bias"] = (256,)
    norm("upsample_2x.1", 256)
    keys["pe1.positional_encoding_gaussian_matrix"] = (2, 128)
    for m in range(4):
        linear(f"output_hypernetworks_mlps.{m}.layers.0", 256, 256)
        linear(f"output_hypernetworks_mlps.{m}.layers.1", 256, 256)
        linear(f"output_hypernetworks_mlps.{m}.layers.2", 32, 256)
    linear("iou_prediction_head.layers.0", 256, 256)
    linear("iou_prediction_head.layers.1", 256, 256)
    linear("iou_prediction_head.layers.2", 4, 256)
    return keys


def test_state_dict_matches_released_layout():
    got = {k: tuple(v.shape) for k, v in MultiScaleMaskDecoder().state_dict().items()}
    assert got == released_keys()
    prompt = {k: tuple(v.shape) for k, v in PromptEncoder(256).state_dict().items()}
    assert prompt == {"pe_layer.positional_encoding_gaussian_matrix": (2, 128), "no_mask_embed.weight": (1, 256)}


@pytest.mark.parametrize("num_scales", [1, 2, 3])
@pytest.mark.parametrize("t", [0, 1, 3])
def test_output_shapes_non_square(t: int, num_scales: int):
    h, w = 4, 6
    out = tiny_decoder(num_scales)(*inputs(t, num_scales, h, w))
    assert len(out) == num_scales
    assert out[0].shape == (t, 2 * h, 2 * w)
    for mask in out[1:]:
        assert mask.shape == (t, 4 * h, 4 * w)
    assert all(torch.isfinite(m).all() for m in out)


def test_expanded_view_equals_copied_features():
    dec = tiny_decoder(3)
    expanded = dec(*inputs(3, 3, expand=True))
    copied = dec(*inputs(3, 3, expand=False))
    for a, b in zip(expanded, copied):
        torch.testing.assert_close(a, b)


def test_targets_are_decoded_independently():
    dec = tiny_decoder(2)
    feats, seg, pe, dense = inputs(3, 2)
    together = dec(feats, seg, pe, dense)
    alone = dec(feats[1:2], seg[1:2], pe, dense)
    for a, b in zip(together, alone):
        torch.testing.assert_close(a[1:2], b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("readout", ["first", "mean"])
def test_readout_selects_token_zero_or_mean(readout: str, monkeypatch: pytest.MonkeyPatch):
    dec = tiny_decoder(2, readout=readout)
    seen: list[torch.Tensor] = []
    original = dec._predict_masks

    def record(*args):
        masks = original(*args)
        seen.append(masks)
        return masks

    monkeypatch.setattr(dec, "_predict_masks", record)
    out = dec(*inputs(2, 2))
    assert seen[0].shape[1] == 4  # all mask tokens are decoded
    for masks, got in zip(seen, out):
        expected = masks[:, 0] if readout == "first" else masks.mean(dim=1)
        torch.testing.assert_close(got, expected)


def test_readout_first_and_mean_differ():
    first = tiny_decoder(2, readout="first", seed=3)
    mean = tiny_decoder(2, readout="mean", seed=4)
    mean.load_state_dict(first.state_dict())
    args = inputs(2, 2)
    for a, b in zip(first(*args), mean(*args)):
        assert (a - b).abs().max() > 1e-3


def test_feature_update_uses_previous_scale():
    dec = tiny_decoder(2)
    feats, seg, pe, dense = inputs(2, 2)
    base = dec(feats, seg, pe, dense)
    # Scale-0 inputs reach scale 1 only through the previous-mask feature update.
    seg0 = seg.clone()
    seg0[:, 0] += 1.0
    changed = dec(feats, seg0, pe, dense)
    assert (changed[0] - base[0]).abs().max() > 1e-3
    assert (changed[1] - base[1]).abs().max() > 1e-3
    # ... and scale 1 never flows back into scale 0.
    seg1 = seg.clone()
    seg1[:, 1] += 1.0
    later = dec(feats, seg1, pe, dense)
    torch.testing.assert_close(later[0], base[0])
    assert (later[1] - base[1]).abs().max() > 1e-3


@pytest.mark.parametrize("readout", ["first", "mean"])
def test_gradients_reach_seg_embeddings_and_decoder(readout: str):
    dec = tiny_decoder(2, readout=readout)
    feats, seg, pe, dense = inputs(2, 2)
    seg.requires_grad_(True)
    out = dec(feats, seg, pe, dense)
    (out[0].square().mean() + out[1].square().mean()).backward()
    assert seg.grad is not None and seg.grad[:, 0].abs().sum() > 0 and seg.grad[:, 1].abs().sum() > 0
    for name, param in dec.named_parameters():
        if name.startswith("iou_prediction_head"):
            assert param.grad is None, name  # checkpoint-only, never run
            continue
        assert param.grad is not None, name
        unused = readout == "first" and re.match(r"output_hypernetworks_mlps\.[1-9]", name)
        if unused:
            # As in the released model, only mask token 0's mask is used, so these get zero gradient.
            assert param.grad.abs().sum() == 0, name
        else:
            assert param.grad.abs().sum() > 0, name


def test_empty_targets_backprop():
    dec = tiny_decoder(2)
    feats, seg, pe, dense = inputs(0, 2)
    seg.requires_grad_(True)
    out = dec(feats, seg, pe, dense)
    sum(o.sum() for o in out).backward()
    assert seg.grad is not None and seg.grad.shape == (0, 2, C)


def test_bad_shapes_raise_input_error():
    dec = tiny_decoder(2)
    feats, seg, pe, dense = inputs(2, 2)
    with pytest.raises(InputError, match="image_features"):
        dec(feats[:, :1], seg, pe, dense)
    with pytest.raises(InputError, match="seg_embeddings"):
        dec(feats, seg[:1], pe, dense)
    with pytest.raises(InputError, match="image_pe"):
        dec(feats, seg, pe[..., :3], dense)
    with pytest.raises(ValueError, match="readout"):
        MultiScaleMaskDecoder(readout="max")


def test_prompt_encoder_outputs():
    torch.manual_seed(0)
    prompt = PromptEncoder(C)
    pe = prompt.get_dense_pe(3, 5)
    assert pe.shape == (1, C, 3, 5)
    assert pe.abs().max() <= 1.0  # sin / cos features
    assert not torch.allclose(pe[..., 0, 0], pe[..., 2, 4])
    dense = prompt.dense_embedding(3, 5)
    assert dense.shape == (1, C, 3, 5)
    torch.testing.assert_close(dense[0, :, 1, 2], prompt.no_mask_embed.weight[0])


def test_position_embedding_formula():
    torch.manual_seed(0)
    layer = PositionEmbeddingRandom(4)
    pe = layer((2, 3))
    m = layer.positional_encoding_gaussian_matrix
    # Pixel (row 1, col 2): normalised centre (x, y) = (2.5/3, 1.5/2), mapped to [-1, 1].
    xy = torch.tensor([2 * 2.5 / 3 - 1, 2 * 1.5 / 2 - 1])
    proj = 2 * math.pi * (xy @ m)
    torch.testing.assert_close(pe[:, 1, 2], torch.cat([proj.sin(), proj.cos()]))


def test_layernorm2d_and_mlp():
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.uniform_()
        norm.bias.uniform_()
    x = torch.randn(2, 6, 3, 4)
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expected = norm.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected)
    mlp = MLP(5, 7, 3, 3, sigmoid_output=True)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(7, 5), (7, 7), (3, 7)]
    y = mlp(torch.randn(4, 5))
    assert y.shape == (4, 3) and ((y > 0) & (y < 1)).all()


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(16, 2, downsample_rate=2)
    q, k = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    qh = attn.q_proj(q).reshape(3, 5, 2, 4).transpose(1, 2)
    kh = attn.k_proj(k).reshape(3, 7, 2, 4).transpose(1, 2)
    vh = attn.v_proj(k).reshape(3, 7, 2, 4).transpose(1, 2)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1)
    expected = attn.out_proj((weights @ vh).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(q, k, k), expected)
