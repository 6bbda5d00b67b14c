"""Released checkpoint layout (docs/architecture.md) maps onto our model with no missing/unexpected keys."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

from pixellm.errors import InputError
from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE
from pixellm.model.modeling_pixellm import PixelLMForCausalLM
from pixellm.model.released import convert_released_state_dict, load_released_state_dict
from pixellm.model.vision import interpolate_position_embeddings


def released_layout(h: int, v: int, vocab: int, layers: int, inter: int, c: int = 256) -> dict[str, tuple]:
    """Key -> shape of a released ``hf_model`` state dict, written from the table in docs/architecture.md."""
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
    # Released sizes for everything non-LLM except CLIP width; a 2-layer LLaMA with H = 64.
    return small_config(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=TINY_VOCAB_SIZE),
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
    vocab = model.config.text_config.vocab_size
    released = {k: torch.randn(s, generator=g) for k, s in released_layout(64, 32, vocab, 2, 128).items()}
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
    layout = released_layout(64, 32, model.config.text_config.vocab_size, 2, 128)
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


def bilinear_half_pixel(grid: torch.Tensor, out: int) -> torch.Tensor:
    """``g x g x C`` -> ``out x out x C`` bilinear with half-pixel centres (``align_corners=False``),
    written out by hand so the check does not reuse ``F.interpolate``."""
    g = grid.shape[0]

    def taps(i: int) -> tuple[int, int, float]:
        x = max((i + 0.5) * g / out - 0.5, 0.0)
        lo = min(int(x), g - 1)
        return lo, min(lo + 1, g - 1), x - lo

    res = torch.empty(out, out, grid.shape[-1], dtype=torch.float64)
    g64 = grid.double()
    for r in range(out):
        r0, r1, fr = taps(r)
        for c in range(out):
            c0, c1, fc = taps(c)
            top = (1 - fc) * g64[r0, c0] + fc * g64[r0, c1]
            bottom = (1 - fc) * g64[r1, c0] + fc * g64[r1, c1]
            res[r, c] = (1 - fr) * top + fr * bottom
    return res


def released_position_table(table: torch.Tensor, out: int) -> torch.Tensor:
    """The released tower's rule (docs/fidelity.md): rows 0..g*g-1 (CLS + all patches but the last)
    as a g x g grid, bilinear to out x out -> new rows 0..out*out-1; the old last row appended."""
    g = int(round((table.shape[0] - 1) ** 0.5))
    grid = bilinear_half_pixel(table[:-1].reshape(g, g, -1), out).reshape(out * out, -1)
    return torch.cat([grid, table[-1:].double()]).float()


def test_released_position_table_is_the_authors_bilinear_grid_plus_last_row():
    torch.manual_seed(0)
    table = torch.randn(577, 8)  # CLIP-336: CLS + 24 x 24 patches
    assert torch.equal(interpolate_position_embeddings(table, 24, "released"), table)  # native grid
    released = interpolate_position_embeddings(table, 32, "released")
    assert released.shape == (1025, 8)
    assert torch.allclose(released, released_position_table(table, 32), atol=1e-6)
    # position ids stay in order: CLS gets the grid's top-left cell (the corner of a half-pixel
    # resize = old row 0), patch 0 a blend of the CLS row and patch row 0, the last patch the old last row
    assert torch.equal(released[-1], table[-1])
    assert torch.allclose(released[0], table[0], atol=1e-6)
    assert torch.allclose(released[1], 0.375 * table[0] + 0.625 * table[1], atol=1e-6)
    # the "correct" option keeps the CLS row and differs from the released table everywhere else
    correct = interpolate_position_embeddings(table, 32, "correct")
    assert torch.equal(correct[0], table[0])
    assert (correct[1:] - released[1:]).abs().amax(dim=1).min() > 0
    # a bf16 table is resized in fp32 (as the released fp32 tower did), then stored in bf16
    half = interpolate_position_embeddings(table.bfloat16(), 32, "released")
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, released_position_table(table.bfloat16().float(), 32).bfloat16())


def released_patch_masks(sizes: list[tuple[int, int]], image_size: int, patch: int, llm_grid: int):
    """The released masks: a pixel validity mask, nearest-resized to the patch grid (the CLS
    position always valid), and the patch mask nearest-resized to the LLM grid."""
    pixels = torch.zeros(len(sizes), 1, image_size, image_size)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = 1
    patches = F.interpolate(pixels, size=(image_size // patch,) * 2, mode="nearest")[:, 0]
    llm = F.interpolate(patches[:, None], size=(llm_grid, llm_grid), mode="nearest")[:, 0]
    keys = torch.cat([torch.ones(len(sizes), 1), patches.flatten(1)], dim=1)
    return keys.bool(), llm.flatten(1).bool()


@pytest.mark.parametrize("image_size,patch,llm_grid", [(448, 14, 16), (64, 8, 4), (84, 14, 3)])
def test_padding_masks_equal_the_released_nearest_resize(image_size, patch, llm_grid):
    from pixellm.processing.image_processing import PixelLMImageProcessor, grid_valid_mask

    # every resized size the processor can give (longest side = S), plus some unusual ones
    sizes = [(k, image_size) for k in range(1, image_size + 1)] + [(image_size, k) for k in range(1, image_size)]
    sizes += [(17, 33), (image_size - 1, image_size - 2), (1, 1)]
    keys, llm = released_patch_masks(sizes, image_size, patch, llm_grid)
    resized = torch.tensor(sizes)
    ours = grid_valid_mask(resized, image_size, image_size // patch).flatten(1)
    assert torch.equal(torch.cat([torch.ones(len(sizes), 1, dtype=torch.bool), ours], dim=1), keys)
    assert torch.equal(grid_valid_mask(resized, image_size, llm_grid).flatten(1), llm)
    proc = PixelLMImageProcessor(image_size=image_size, patch_size=patch)
    assert torch.equal(grid_valid_mask(resized, proc.image_size, proc.patch_grid).flatten(1), keys[:, 1:])


def vision_setup(seed: int = 0):
    """A CLIP with a 4 x 4 native grid (56 px) run at a 6 x 6 grid (84 px), as the released
    tower runs CLIP-336 at 448 px."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    native = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                              patch_size=14, image_size=56)
    return CLIPVisionModel(native).eval(), native


def released_tower_features(clip, native, pixel_values, sizes, layers):
    """Reference: a stock HF CLIP built at the larger size with the released table and the
    released key mask, run through its own forward."""
    from transformers import CLIPVisionModel

    s = pixel_values.shape[-1]
    big_cfg = copy.deepcopy(native)
    big_cfg.image_size = s
    big = CLIPVisionModel(big_cfg).eval()
    state = dict(clip.state_dict())
    state["embeddings.position_embedding.weight"] = released_position_table(
        clip.embeddings.position_embedding.weight.detach(), s // native.patch_size)
    big.load_state_dict(state)
    keys, _ = released_patch_masks(sizes, s, native.patch_size, 1)
    additive = torch.zeros(len(sizes), 1, keys.shape[1], keys.shape[1])
    additive = additive.masked_fill(~keys[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        hs = big(pixel_values, output_hidden_states=True, attention_mask=additive).hidden_states
    return [hs[i][:, 1:] for i in layers]


def test_vision_features_equal_the_released_tower_with_padding():
    from pixellm.model.vision import clip_multiscale_features
    from pixellm.processing.image_processing import grid_valid_mask

    clip, native = vision_setup()
    sizes = [(84, 84), (84, 40), (23, 84)]
    pixel_values = torch.randn(3, 3, 84, 84)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, h:] = 0
        pixel_values[i, :, :, w:] = 0
    layers = [-2, -3]
    valid = grid_valid_mask(torch.tensor(sizes), 84, 6)
    with torch.no_grad():
        ours = clip_multiscale_features(clip, pixel_values, valid, layers, "released")
        correct = clip_multiscale_features(clip, pixel_values, valid, layers, "correct")
        unmasked = clip_multiscale_features(clip, pixel_values, None, layers, "released")
    ref = released_tower_features(clip, native, pixel_values, sizes, layers)
    for a, r, c in zip(ours, ref, correct):
        assert a.shape == (3, 36, 16)
        assert torch.allclose(a, r, atol=1e-5), (a - r).abs().max()
        assert (c - r).abs().max() > 1e-2  # the other interpolation would be caught
    assert (unmasked[0][1:] - ref[0][1:]).abs().max() > 1e-2  # so would a missing mask


@pytest.mark.parametrize("resized", [(64, 30), (40, 30)])
def test_masks_are_resized_to_the_longer_resized_side_then_cropped(resized):
    """Released post-processing: 4G -> max(h', w') square, crop (h', w'), -> original size. For
    processor inputs max(h', w') = S (the first case); the second is a caller's own size."""
    torch.manual_seed(0)
    model = PixelLMForCausalLM(small_config()).eval()
    s = model.config.image_size
    pixel_values = torch.randn(1, 3, s, s)
    seg = torch.randn(2, model.config.num_scales, model.config.decoder_dim)
    with torch.no_grad():
        feats = model.encode_images(pixel_values, torch.tensor([resized]), torch.tensor([[50, 37]]))
        got = model.predict_masks(feats, seg, torch.zeros(2, dtype=torch.long))[0]
        grid = feats.decoder.shape[-1]
        pe, dense = model.prompt_encoder.get_dense_pe(grid, grid), model.prompt_encoder.dense_embedding(grid, grid)
        low = model.mask_fusion(model.mask_decoder(feats.decoder[[0, 0]], seg, pe, dense))[:, None]
    t = max(resized)
    ref = F.interpolate(low, size=(t, t), mode="bilinear", align_corners=False)[..., : resized[0], : resized[1]]
    ref = F.interpolate(ref, size=(50, 37), mode="bilinear", align_corners=False)[:, 0]
    assert got.shape == (2, 50, 37)
    assert torch.allclose(got, ref, atol=1e-6)
    if t != s:  # the image_size rule gives other masks here, so the test can tell them apart
        other = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)[..., : resized[0], : resized[1]]
        other = F.interpolate(other, size=(50, 37), mode="bilinear", align_corners=False)[:, 0]
        assert (other - got).abs().max() > 1e-3


def test_prediction_runs_clip_once_and_decodes_with_the_kv_cache():
    """Defect fix (docs/fidelity.md): the released inference re-encodes the image for the decoder
    and generates with ``use_cache=False``. Ours: one CLIP pass; every step after the prompt feeds
    one new token."""
    import numpy as np

    from pixellm.build import tiny_processor
    from pixellm.infer.generation import GenerationOptions
    from pixellm.infer.predictor import Predictor
    from pixellm.testing import scripted_pixellm

    processor = tiny_processor()
    model = scripted_pixellm(processor, " the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    predictor = Predictor(model, processor, GenerationOptions(max_new_tokens=20))
    clip_calls, llm_lengths = [], []
    model.vision_tower.embeddings.patch_embedding.register_forward_hook(lambda m, i, o: clip_calls.append(1))
    model.language_model.get_decoder().register_forward_pre_hook(
        lambda m, args, kwargs: llm_lengths.append(
            (kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]).shape[1]),
        with_kwargs=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    result = predictor(image, "Where can I sit?")
    assert result.num_masks >= 2 and result.masks.shape[1:] == (40, 70)
    assert len(clip_calls) == 1
    assert len(llm_lengths) >= len(result.token_ids) - 1 >= 2
    assert llm_lengths[0] > 1 and set(llm_lengths[1:]) == {1}
