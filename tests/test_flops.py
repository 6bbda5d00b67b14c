"""FLOP counting on the meta device: LLM against 2*params*tokens, decode sum, parts, presets."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from pixellm import PixelLMConfig
from pixellm.cli import main
from pixellm.tools.flops import (
    META,
    LisaSpec,
    cache_kwarg,
    cache_of,
    count_flops,
    decode_step_flops,
    lisa_flops,
    llm_flops,
    pixellm_flops,
    preset_flops,
)


def _tiny_llm(**kw):
    cfg = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=344,
                      vocab_size=500, **kw)
    with META:
        return AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)


def test_decode_step_is_two_flops_per_parameter_plus_attention():
    llm = _tiny_llm()
    # Matmul parameters: everything but the input embedding and the norms (lm_head included).
    n = sum(p.numel() for name, p in llm.named_parameters() if p.dim() == 2 and "embed_tokens" not in name)
    for c in (1, 300):
        attention = 2 * 2 * c * 128 * 2  # QK^T and AV over a cache of c (plus the new token) per layer
        assert decode_step_flops(llm, c, 128) == pytest.approx(2 * n + attention, rel=0.02)


def test_prefill_matches_two_flops_per_parameter_per_token():
    llm = _tiny_llm()
    n_body = sum(p.numel() for name, p in llm.named_parameters()
                 if p.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name)
    p_tokens = 40
    flops = llm_flops(llm, p_tokens, 1)
    expected = 2 * n_body * p_tokens + 2 * 128 * 500 + 2 * 2 * p_tokens**2 * 128 * 2  # + 1 logit row + attn
    assert flops["llm_prefill"] == pytest.approx(expected, rel=0.02)
    assert flops["llm_decode"] == 0


def test_decode_sum_equals_counting_every_step():
    llm = _tiny_llm()
    prompt, new = 7, 6
    with torch.no_grad():
        cache = cache_of(llm(inputs_embeds=torch.zeros(1, prompt, 128, device=META), use_cache=True))
        total = 0
        for _ in range(new - 1):  # the prefill produced the first token
            flops, out = count_flops(llm, inputs_embeds=torch.zeros(1, 1, 128, device=META), use_cache=True,
                                     **cache_kwarg(llm, cache))
            total, cache = total + flops, cache_of(out)
    assert llm_flops(llm, prompt, new)["llm_decode"] == total


def test_pixellm_tiny_parts_sum_and_decoder_scales_with_targets():
    cfg = PixelLMConfig.from_preset("tiny")
    one = pixellm_flops(cfg, text_tokens=10, generated_tokens=5, targets=1)
    three = pixellm_flops(cfg, text_tokens=10, generated_tokens=5, targets=3)
    assert set(one.parts) == {"vision_encoder", "projectors", "llm_prefill", "llm_decode", "pixel_decoder"}
    assert all(v > 0 for v in one.parts.values())
    d = one.to_dict()
    assert d["total_tflops"] == pytest.approx(sum(d["parts_tflops"].values()))
    assert one.prompt_tokens == 10 + cfg.num_image_tokens
    # generate decodes every target on its own copy of the image's features: only the positional
    # encodings are shared, so the decoder costs 3x (upsample_2x included, as inference runs it).
    assert three.parts["pixel_decoder"] == pytest.approx(3 * one.parts["pixel_decoder"], rel=0.01)
    assert three.parts["llm_prefill"] == one.parts["llm_prefill"]


def test_pixellm_counts_the_models_own_functions(monkeypatch):
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    called = []
    for name in ("encode_images", "seg_embeddings", "decode_masks"):
        def spy(self, *args, _orig=getattr(PixelLMForCausalLM, name), _name=name, **kwargs):
            called.append(_name)
            return _orig(self, *args, **kwargs)

        monkeypatch.setattr(PixelLMForCausalLM, name, spy)
    pixellm_flops(PixelLMConfig.from_preset("tiny"), text_tokens=4, generated_tokens=2, targets=2)
    assert called == ["encode_images", "seg_embeddings", "decode_masks"]


def test_lisa_small_counts_sam():
    spec = LisaSpec(
        text_config={"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 344, "vocab_size": 500},
        clip_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "patch_size": 16, "image_size": 64},
        sam_vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "global_attn_indexes": [1], "window_size": 4, "mlp_dim": 128, "image_size": 128,
                           "patch_size": 16, "output_channels": 256},
    )
    report = lisa_flops(spec, text_tokens=8, generated_tokens=4)
    assert report.prompt_tokens == 8 + 16
    assert report.parts["sam_image_encoder"] > 0 and report.parts["mask_decoder"] > 0


def test_pixellm_7b_markedly_cheaper_than_lisa_7b():
    pixellm, lisa = preset_flops("pixellm-7b"), preset_flops("lisa-7b")
    assert pixellm.parts["llm_decode"] == lisa.parts["llm_decode"]  # same LLM, same answer length
    assert pixellm.total < 0.8 * lisa.total
    # A SAM ViT-H forward costs about as much as generating ~500 tokens with LLaMA-7B (paper; docs/tools.md).
    assert 0.5 < lisa.parts["sam_image_encoder"] / lisa.parts["llm_decode"] < 1.5


def test_cli_json_and_bad_preset(capsys):
    assert main(["flops", "--preset", "pixellm-13b", "--tokens", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "pixellm-13b" and out["generated_tokens"] == 16
    assert out["total_tflops"] == pytest.approx(sum(out["parts_tflops"].values()))
    with pytest.raises(SystemExit):
        main(["flops", "--preset", "gpt-4"])
    assert main(["flops", "--preset", "lisa-7b", "--tokens", "0"]) == 1
    assert "--tokens must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("mask", [False, True])
def test_cpu_attention_counted_as_on_meta(mask):
    # torch's FlopCounterMode has no formula for its CPU flash-attention kernel (it counted 0):
    # real CPU tensors must give the FLOPs the meta device's bmm decomposition gives
    def attend(device):
        q = torch.randn(2, 4, 9, 32, device=device, requires_grad=True)
        k = torch.randn(2, 4, 11, 32, device=device, requires_grad=True)
        v = torch.randn(2, 4, 11, 32, device=device, requires_grad=True)
        bias = torch.zeros(2, 1, 9, 11, device=device) if mask else None
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias).sum().backward()

    on_cpu, _ = count_flops(attend, "cpu")
    on_meta, _ = count_flops(attend, "meta")
    forward = 2 * 2 * 2 * 4 * 9 * 11 * 32  # QK^T and AV
    assert on_meta == 3 * forward  # forward, then the gradients of both products' two inputs
    assert on_cpu == on_meta
