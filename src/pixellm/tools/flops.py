"""FLOPs of one inference (supplement A, "Calculation of TFLOPs"): PixelLM against LISA.

Everything is built on the ``meta`` device (no memory, no compute) and counted with
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2 FLOPs), part by part:

- PixelLM: the model's own functions: ``encode_images`` (CLIP at 448 px up to the deepest
  selected layer, projectors + neck), the LLM's forward as ``generate`` runs it (prefill +
  decoding with a KV cache), ``seg_embeddings`` (``text_hidden_fcs`` + token fusion) and
  ``decode_masks`` (the multi-scale pixel decoder) for each target.
- LISA: the same LLM with LLaVA's CLIP ViT-L/14 at 224 px (all 24 layers, LLaVA reads layer -2)
  and a linear projector, ``text_hidden_fcs``, SAM ViT-H at 1024 px (``transformers.SamModel``
  sized as ViT-H) and SAM's prompt encoder + mask decoder for each target.

The answer length is fixed (512 generated tokens in the paper): the prefill produces the first
token, then ``T - 1`` decode steps run with cache lengths ``P .. P+T-2``. A decode step costs
``a + b * cache_length`` exactly (attention is linear in the cache length), so two counted steps
give the sum over all steps without running ``T`` steps. Attention is counted as full
``QK^T`` / ``AV`` products (no causal halving), as DeepSpeed's profiler does.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from pixellm.errors import ConfigError

DEFAULT_TEXT_TOKENS = 64  # llava_v1 system prompt (~40 LLaMA tokens) + a short question
META = torch.device("meta")


def count_cpu_attention() -> None:
    """Give ``FlopCounterMode`` the FLOPs of PyTorch's CPU flash attention, which it counts as 0
    (torch 2.13 has formulas for the CUDA kernels only; on ``meta`` tensors attention runs as
    ``bmm``s and is counted). Forward: full ``QK^T`` and ``AV`` products, as for the CUDA kernels;
    backward: their gradients, twice the forward, as the ``bmm``s count on ``meta`` (the kernel's
    recomputation of ``QK^T`` is left out, as model FLOPs leave out recomputation). Idempotent;
    does nothing on a torch without these internals."""
    try:  # module internals, not in its __all__: a torch that moves them counts 0 as before
        from torch.utils.flop_counter import flop_registry, sdpa_flop_count
    except ImportError:
        return
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in flop_registry:
        @register_flop_formula(forward)
        def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)
    if backward is not None and backward not in flop_registry:
        @register_flop_formula(backward)
        def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                    out_shape=None, **kwargs) -> int:
            return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run ``fn`` under ``FlopCounterMode``; returns ``(flops, result)``."""
    count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return int(counter.get_total_flops()), result


@dataclass
class FlopsReport:
    """Per-part FLOPs of one inference; ``total`` is their sum."""

    name: str
    parts: dict[str, int]
    prompt_tokens: int  # LLM prompt length P (image tokens included)
    generated_tokens: int  # T
    targets: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.name,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "targets": self.targets,
            "parts_tflops": {k: v / 1e12 for k, v in self.parts.items()},
            "total_tflops": self.total / 1e12,
            **self.notes,
        }

    def table(self) -> str:
        width = max(len(k) for k in self.parts)
        lines = [f"{self.name}: P={self.prompt_tokens} prompt tokens, T={self.generated_tokens} generated, "
                 f"{self.targets} target(s)"]
        lines += [f"  {k:<{width}}  {v / 1e12:10.4g} TFLOPs" for k, v in self.parts.items()]
        lines.append(f"  {'total':<{width}}  {self.total / 1e12:10.4g} TFLOPs")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- LLM


def cache_of(output: Any) -> Any:
    """The KV cache of a causal-LM output (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def cache_kwarg(llm: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the forward argument name this transformers version uses."""
    return {"cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values": cache}


def decode_step_flops(llm: nn.Module, cache_length: int, hidden: int) -> int:
    """FLOPs of one cached decode step after ``cache_length`` tokens (the prefill is not counted)."""
    with torch.no_grad():
        cache = cache_of(llm(inputs_embeds=torch.zeros(1, cache_length, hidden, device=META), use_cache=True,
                             logits_to_keep=1))
        flops, _ = count_flops(
            llm, inputs_embeds=torch.zeros(1, 1, hidden, device=META), use_cache=True, **cache_kwarg(llm, cache)
        )
    return flops


def llm_flops(llm: nn.Module, prompt_tokens: int, generated_tokens: int) -> dict[str, int]:
    """``{"llm_prefill", "llm_decode"}`` FLOPs of an HF causal LM (on ``meta``) generating
    ``generated_tokens`` after a ``prompt_tokens`` prompt; logits only where generate needs them."""
    if prompt_tokens < 1 or generated_tokens < 1:
        raise ConfigError("prompt and generated token counts must be >= 1")
    hidden = llm.get_input_embeddings().embedding_dim
    with torch.no_grad():
        prefill, _ = count_flops(
            llm, inputs_embeds=torch.zeros(1, prompt_tokens, hidden, device=META), use_cache=True, logits_to_keep=1
        )
    steps = generated_tokens - 1
    if steps == 0:
        return {"llm_prefill": prefill, "llm_decode": 0}
    first = decode_step_flops(llm, prompt_tokens, hidden)
    last = decode_step_flops(llm, prompt_tokens + steps - 1, hidden) if steps > 1 else first
    # Linear in the cache length -> the sum is the number of steps times the mean of both ends.
    return {"llm_prefill": prefill, "llm_decode": steps * (first + last) // 2}


# ----------------------------------------------------------------------------- PixelLM


def pixellm_flops(
    config: Any,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    generated_tokens: int = 512,
    targets: int = 1,
    name: str = "pixellm",
) -> FlopsReport:
    """FLOPs of one PixelLM inference for a ``PixelLMConfig`` (model built on ``meta``)."""
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM
    from pixellm.model.vision import clip_multiscale_features

    config = copy.deepcopy(config)
    with META:
        # requires_grad off: FlopCounterMode's module tracker hooks autograd otherwise.
        model = PixelLMForCausalLM(config).eval().requires_grad_(False)
    s = config.image_size
    hidden = model.language_model.get_input_embeddings().embedding_dim
    parts: dict[str, int] = {}
    with torch.no_grad():
        # The model's own vision pass (no padding = full cost; nothing is read, so it runs on
        # meta). Its CLIP part is counted on its own through the function encode_images calls;
        # the rest (projectors, neck, detail features) is the difference.
        pixels = torch.zeros(1, 3, s, s, device=META)
        encode, features = count_flops(model.encode_images, pixels)
        parts["vision_encoder"], _ = count_flops(
            clip_multiscale_features, model.vision_tower, pixels, None, config.vision_select_layers,
            config.pos_interpolation,
        )
        parts["projectors"] = encode - parts["vision_encoder"]
        prompt = text_tokens + config.num_image_tokens
        parts.update(llm_flops(model.language_model, prompt, generated_tokens))

        def decoder() -> None:
            # What generate runs per complete group: seg embeddings, then the pixel decoder on
            # the group's image (the resizing after it counts no FLOPs).
            seg = model.seg_embeddings(torch.zeros(targets, config.num_codebook_tokens, hidden, device=META))
            index = torch.zeros(targets, dtype=torch.long, device=META)
            detail = features.detail[index] if features.detail is not None else None
            model.decode_masks(features.decoder[index], seg, detail)

        parts["pixel_decoder"] = count_flops(decoder)[0] if targets else 0
    notes = {"image_size": s, "vision_layers_run": max(i % (config.vision_config.num_hidden_layers + 1)
                                                        for i in config.vision_select_layers)}
    return FlopsReport(name, parts, prompt, generated_tokens, targets, notes)


# ----------------------------------------------------------------------------- LISA

# SAM ViT-H image encoder (segment-anything ``build_sam_vit_h``).
SAM_VIT_H = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "global_attn_indexes": [7, 15, 23, 31],
    "window_size": 14,
    "mlp_dim": 5120,
    "image_size": 1024,
    "patch_size": 16,
    "output_channels": 256,
}
# LLaVA v1's vision tower: CLIP ViT-L/14 at 224 px.
CLIP_VIT_L_224 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


@dataclass
class LisaSpec:
    """Sizes of a LISA model: a LLaVA (CLIP + linear projector + LLM) and SAM."""

    text_config: dict[str, Any]
    clip_config: dict[str, Any] = field(default_factory=lambda: dict(CLIP_VIT_L_224))
    sam_vision_config: dict[str, Any] = field(default_factory=lambda: dict(SAM_VIT_H))
    seg_dim: int = 256  # SAM prompt dimension (text_hidden_fcs output)


def lisa_flops(
    spec: LisaSpec,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    generated_tokens: int = 512,
    targets: int = 1,
    name: str = "lisa",
) -> FlopsReport:
    """FLOPs of one LISA inference: LLaVA parts counted one by one (LLaVA's own forward checks
    image-token counts with ``.item()``, impossible on meta), then SAM."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        CLIPVisionConfig,
        CLIPVisionModel,
        SamConfig,
        SamModel,
    )

    text_config = AutoConfig.for_model(**copy.deepcopy(spec.text_config))
    clip_config = CLIPVisionConfig(**spec.clip_config)
    vis = dict(spec.sam_vision_config)
    size, patch = vis.get("image_size", 1024), vis.get("patch_size", 16)
    prompt_cfg = {"image_size": size, "patch_size": patch, "image_embedding_size": size // patch}
    sam_config = SamConfig(vision_config=vis, prompt_encoder_config=prompt_cfg)
    with META:
        llm = AutoModelForCausalLM.from_config(text_config).eval()
        clip = CLIPVisionModel(clip_config).eval()
        hidden = text_config.hidden_size
        projector = nn.Linear(clip_config.hidden_size, hidden)
        text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, spec.seg_dim))
        sam = SamModel(sam_config).eval()
    for module in (llm, clip, projector, text_hidden_fcs, sam):
        module.requires_grad_(False)
    grid = clip_config.image_size // clip_config.patch_size
    sam_size = sam_config.vision_config.image_size
    parts: dict[str, int] = {}
    with torch.no_grad():
        pixels = torch.zeros(1, 3, clip_config.image_size, clip_config.image_size, device=META)
        parts["vision_encoder"], _ = count_flops(clip, pixel_values=pixels, output_hidden_states=True)
        parts["projectors"], _ = count_flops(projector, torch.zeros(1, grid * grid, clip_config.hidden_size, device=META))
        prompt = text_tokens + grid * grid
        parts.update(llm_flops(llm, prompt, generated_tokens))
        sam_pixels = torch.zeros(1, 3, sam_size, sam_size, device=META)
        parts["sam_image_encoder"], embeddings = count_flops(sam.get_image_embeddings, sam_pixels)

        def decoder() -> None:
            seg = text_hidden_fcs(torch.zeros(targets, hidden, device=META))  # one [SEG] per target
            _, c, h, w = embeddings.shape
            pe = sam.get_image_wide_positional_embeddings()
            dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
            for t in range(targets):  # LISA decodes each target with its own prompt
                sam.mask_decoder(embeddings, pe, seg[t].reshape(1, 1, 1, c), dense, multimask_output=False)

        parts["mask_decoder"] = count_flops(decoder)[0] if targets else 0
    notes = {"image_size": clip_config.image_size, "sam_image_size": sam_size}
    return FlopsReport(name, parts, prompt, generated_tokens, targets, notes)


# ----------------------------------------------------------------------------- presets

PRESETS = ("pixellm-7b", "pixellm-13b", "lisa-7b", "lisa-13b")


def preset_flops(
    preset: str, generated_tokens: int = 512, text_tokens: int = DEFAULT_TEXT_TOKENS, targets: int = 1
) -> FlopsReport:
    """FLOPs of a named model; LISA-xB uses the same LLaMA size as PixelLM-xB."""
    from pixellm.build import register_appended_tokens
    from pixellm.model.configuration_pixellm import PixelLMConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    family, size = preset.split("-")
    config = PixelLMConfig.from_preset(f"pixellm-{size}")
    register_appended_tokens(config)  # the released vocabulary: LLaMA's 32000 + the 8 added tokens
    if family == "pixellm":
        return pixellm_flops(config, text_tokens, generated_tokens, targets, name=preset)
    text = config.text_config.to_dict()
    return lisa_flops(LisaSpec(text_config=text), text_tokens, generated_tokens, targets, name=preset)
