"""End to end on a synthetic released-format folder (docs/architecture.md, docs/fidelity.md):
``convert-released`` then ``Predictor``, for safetensors and ``.bin`` shards.

The folder is written the way the authors' merge script writes ``hf_model/``: a LLaVA-style
``config.json``, sharded weights with an index (every released key, no CLIP, the unused SAM
prompt-encoder tensors; the ``.bin`` variant in bf16 with the rotary ``inv_freq`` buffers older
transformers saved), and the tokenizer with the added ``[SEG0]..[SEG5]``, ``<im_start>``,
``<im_end>`` tokens. Sizes are tiny except the decoder (released sizes) and the 448 px input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_released import released_layout, released_tower_features
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from pixellm.build import tiny_tokenizer
from pixellm.cli import main
from pixellm.errors import DataError
from pixellm.infer.generation import GenerationOptions
from pixellm.infer.predictor import Predictor
from pixellm.tools.convert_released import convert_released

CLIP_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2,
                   patch_size=14, image_size=56)  # a 4 x 4 native grid, run at 32 x 32 (448 px)
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4)
PIXEL = ("mm_projector", "out_mm_projector", "text_hidden_fcs", "image_feature_neck", "prompt_encoder", "mask_decoder")


def to_released_key(key: str) -> str:
    """How the authors' checkpoint names one of our parameters (written independently of
    ``pixellm.model.released``)."""
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith("language_model.model."):
        return "model." + key[len("language_model.model."):]
    assert key.startswith(PIXEL), key
    return "model." + key


def write_released_folder(root, fmt: str, clip_dir, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write ``root`` as a released ``hf_model`` folder; return the tensors written."""
    root.mkdir()
    tok = tiny_tokenizer()
    tok.add_tokens([f"[SEG{i}]" for i in range(6)])  # as the authors' script adds them
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    tok.save_pretrained(root)
    vocab = len(tok)
    g = torch.Generator().manual_seed(seed)
    layout = released_layout(LLAMA["hidden_size"], CLIP_VISION["hidden_size"], vocab,
                             LLAMA["num_hidden_layers"], LLAMA["intermediate_size"])
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in sorted(layout.items())}
    dtype, ext, stem = torch.float32, "safetensors", "model"
    if fmt == "bin":
        dtype, ext, stem = torch.bfloat16, "bin", "pytorch_model"
        state = {k: v.to(dtype) for k, v in state.items()}
        head = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
        for i in range(LLAMA["num_hidden_layers"]):
            state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head, 2) / head)
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for n, part in enumerate(shards, start=1):
        name = f"{stem}-{n:05d}-of-00002.{ext}"
        tensors = {k: state[k].contiguous() for k in part}
        if fmt == "bin":
            torch.save(tensors, root / name)
        else:
            save_file(tensors, root / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (root / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                               "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["PixelLMForCausalLM"], "model_type": "llava", "vocab_size": vocab, **LLAMA,
        "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        "mm_hidden_size": CLIP_VISION["hidden_size"], "mm_vision_select_layer": -2, "mm_use_im_start_end": True,
        "mm_vision_tower": str(clip_dir), "vision_tower": str(clip_dir), "out_dim": 256,
        "image_feature_scale_num": 2, "resize_vision_tower": True, "resize_vision_tower_size": 448,
        "pad_train_clip_images": True, "vision_tower_for_mask": True, "separate_mm_projector": True,
        "mm_projector_hidden_dim": 2, "mm_projector_out_dim": 1, "train_mask_decoder": True,
        "torch_dtype": str(dtype).replace("torch.", ""), "transformers_version": "4.31.0", "use_cache": False,
    }))
    return state


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A CLIP folder in the format of openai/clip-vit-large-patch14-336 (a full CLIPModel)."""
    path = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=CLIP_VISION, text_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
    ))).save_pretrained(path)
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_released_folder_converts_and_predicts(fmt, clip_dir, tmp_path, capsys):
    src, out = tmp_path / "hf_model", tmp_path / "converted"
    state = write_released_folder(src, fmt, clip_dir)
    assert main(["convert-released", "--src", str(src), "--vision", str(clip_dir), "--out", str(out),
                 "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    expected_dropped = sorted(k for k in state if "point_embed" in k or "mask_downscaling" in k or "inv_freq" in k)
    assert f"read {len(state)} tensors" in printed and f"dropped {len(expected_dropped)} unused" in printed

    predictor = Predictor.from_pretrained(out)
    model = predictor.model
    assert model.config.pos_interpolation == "released" and model.config.image_size == 448

    # Every tensor is used: each of our tensors comes from the folder, from CLIP, or is one of the
    # two fusion parameters the release lacks (at the released 1/N, 1/L); the folder's other
    # tensors are exactly the unused SAM prompt-encoder weights and the rotary buffers.
    own = model.state_dict()
    clip = CLIPVisionModel.from_pretrained(clip_dir).eval()
    used = set()
    for key, value in own.items():
        if key.startswith("vision_tower."):
            assert torch.equal(value, clip.state_dict()[key[len("vision_tower."):]]), key
        elif key in ("token_fusion.weights", "mask_fusion.gamma"):
            assert torch.allclose(value, torch.full_like(value, 1 / value.shape[-1])), key
        else:
            rkey = to_released_key(key)
            assert torch.equal(value, state[rkey].float()), key
            used.add(rkey)
    assert sorted(set(state) - used) == expected_dropped
    assert len(used) + len(expected_dropped) == len(state)
    tok = predictor.processor.tokenizer
    assert model.config.codebook_token_ids == tok.convert_tokens_to_ids([f"[SEG{i}]" for i in range(6)])
    assert model.config.im_end_token_id == tok.convert_tokens_to_ids("<im_end>")

    # Vision features: the released rule (bilinear table + appended last row, nearest key mask),
    # built on a stock CLIP at 448 px, through the projectors and the neck.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    inputs = predictor.processor.image_processor([image])
    assert inputs["resized_sizes"].tolist() == [[299, 448]]
    with torch.no_grad():
        feats = model.encode_images(inputs["pixel_values"], inputs["resized_sizes"], inputs["original_sizes"])
        ref = released_tower_features(clip, clip.config, inputs["pixel_values"], [(299, 448)], [-2, -11])
        grids = [r.transpose(1, 2).reshape(1, 16, 32, 32) for r in ref]
        coarse = F.interpolate(grids[0], size=(16, 16), mode="bilinear", align_corners=False)
        llm_ref = model.mm_projector(coarse.flatten(2).transpose(1, 2))
        dec_ref = torch.stack([model.image_feature_neck(model.out_mm_projector(r).transpose(1, 2).reshape(1, 64, 32, 32))
                               for r in ref], dim=1)
    assert torch.allclose(feats.llm_tokens, llm_ref, atol=1e-5), (feats.llm_tokens - llm_ref).abs().max()
    assert torch.allclose(feats.decoder, dec_ref, atol=1e-4), (feats.decoder - dec_ref).abs().max()

    # Answer and masks are deterministic: a second load gives the same generated answer and the
    # same teacher-forced masks, at the image's size.
    options = GenerationOptions(max_new_tokens=6)
    again = Predictor.from_pretrained(out)
    a, b = predictor(image, "Where is the cat?", options=options), again(image, "Where is the cat?", options=options)
    assert a.token_ids == b.token_ids and a.answer == b.answer and len(a.token_ids) > 0
    assert np.array_equal(a.mask_logits, b.mask_logits)
    answer = "The cat {seg} and the dog {seg}."
    tf_a = predictor.teacher_forced([image], ["Where are the pets?"], [answer])[0]
    tf_b = again.teacher_forced([image], ["Where are the pets?"], [answer])[0]
    assert tf_a.mask_logits.shape == (2, 60, 90) and np.isfinite(tf_a.mask_logits).all()
    assert np.array_equal(tf_a.mask_logits, tf_b.mask_logits)
    assert tf_a.mask_logits.std() > 0


def test_missing_shard_is_a_one_line_error(clip_dir, tmp_path):
    src = tmp_path / "hf_model"
    write_released_folder(src, "safetensors", clip_dir)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(DataError, match=r"model.safetensors.index.json: shard model-00002-of-00002.safetensors"):
        convert_released(src, str(clip_dir), tmp_path / "out")
