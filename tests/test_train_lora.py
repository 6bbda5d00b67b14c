"""LoRA through peft: injection, trainable set, merge to a plain model, unmerged save/load."""

from __future__ import annotations

import pytest
import torch

from pixellm.build import build_pixellm
from pixellm.errors import ConfigError
from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE, PixelLMConfig
from pixellm.model.modeling_pixellm import PixelLMForCausalLM
from pixellm.train.lora import apply_lora, has_lora, load_pixellm, lora_settings, merge_checkpoint, merge_lora
from pixellm.train.setup import set_trainable


def small_model(seed: int = 0) -> PixelLMForCausalLM:
    model, _ = build_pixellm(PixelLMConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, patch_size=8, image_size=64, projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=TINY_VOCAB_SIZE),
        vision_select_layers=[-1, -2], image_size=64, llm_image_grid=4, decoder_dim=32, decoder_heads=4,
        decoder_mlp_dim=64, vision_tower="",
    ), seed=seed)
    return model


def inputs(model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 80, (2, 30), generator=g)
    ids[:, 2:18] = -200
    ids[0, 20:26] = torch.tensor(model.codebook_token_ids)
    return dict(input_ids=ids, pixel_values=torch.randn(2, 3, 64, 64, generator=g))


def with_random_adapters(model):
    apply_lora(model, lora_settings())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at 0 (no-op adapter); make the adapters matter
                p.normal_(std=0.2)
    return model.eval()


def test_adapters_on_q_v_and_trainable_set():
    model = apply_lora(small_model(), lora_settings())
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and all(".q_proj." in n or ".v_proj." in n for n in names)
    assert model.config.lora == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    set_trainable(model, "pixellm")
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(grads[n] for n in names)
    assert not any(v for n, v in grads.items() if n.startswith("vision_tower."))
    assert not grads["language_model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not grads["language_model.model.layers.0.mlp.up_proj.weight"]
    assert grads["language_model.model.embed_tokens.weight"] and grads["language_model.lm_head.weight"]
    assert grads["mask_decoder.mask_tokens.weight"] and grads["image_feature_neck.0.weight"]
    set_trainable(model, "all_but_vision")
    assert model.language_model.model.layers[0].mlp.up_proj.weight.requires_grad
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.vision_tower.parameters())
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, lora_settings())
    with pytest.raises(ConfigError, match="not found"):
        apply_lora(small_model(), lora_settings(target_modules=["nope_proj"]))


def test_merge_gives_the_same_outputs_and_a_plain_checkpoint(tmp_path):
    model = with_random_adapters(small_model())
    x = inputs(model)
    base = small_model().eval()(**x).logits
    with torch.no_grad():
        before = model(**x).logits
    assert (before - base).abs().max() > 1e-3  # the adapters change the output
    merge_lora(model)
    assert not has_lora(model) and model.config.lora is None
    with torch.no_grad():
        after = model(**x).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    plain = PixelLMForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, before, atol=1e-5, rtol=1e-5)


def test_unmerged_checkpoint_round_trip_and_merge_step(tmp_path):
    model = with_random_adapters(small_model())
    x = inputs(model)
    with torch.no_grad():
        before = model(**x).logits
    model.save_pretrained(tmp_path / "lora")
    loaded = load_pixellm(tmp_path / "lora")
    assert has_lora(loaded) and loaded.config.lora["r"] == 8
    direct = PixelLMForCausalLM.from_pretrained(tmp_path / "lora").eval()  # config.lora rebuilds adapters
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, before)
        assert torch.equal(direct(**x).logits, before)
    merge_checkpoint(tmp_path / "lora", tmp_path / "merged")
    merged = load_pixellm(tmp_path / "merged")
    assert not has_lora(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, before, atol=1e-5, rtol=1e-5)
