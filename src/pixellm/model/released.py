"""Key mapping from the released PixelLM checkpoints (``hf_model/``, LoRA merged) to ours.

Released layout (docs/architecture.md, "Released checkpoint layout"): LLaMA keys are the standard HF ones under ``model.`` /
``lm_head.``; the pixel modules sit under ``model.<name>``. CLIP is not in the checkpoint.
We keep the released module names, so the mapping is a prefix change; the prompt encoder's
point / mask-downscaling weights are unused by PixelLM and dropped, and so are LLaMA's rotary
``inv_freq`` buffers, which checkpoints saved by older transformers hold (they are recomputed).
"""

from __future__ import annotations

import torch
from torch import nn

from pixellm.errors import InputError

PIXEL_MODULES = (
    "mm_projector",
    "out_mm_projector",
    "text_hidden_fcs",
    "image_feature_neck",
    "prompt_encoder",
    "mask_decoder",
)
# Used prompt-encoder tensors; every other ``model.prompt_encoder.*`` key is dropped.
PROMPT_ENCODER_USED = ("prompt_encoder.pe_layer.", "prompt_encoder.no_mask_embed.")
# Parameters the released checkpoint lacks (registered fusion weights, optional detail path):
# they keep their initial values (1/N, 1/L), which is what the released code used.
NEW_PARAMETER_PREFIXES = ("token_fusion.", "mask_fusion.", "detail.")
VISION_PREFIXES = ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.")
# Non-parameter buffers that older transformers saved with LLaMA weights.
DROPPED_SUFFIXES = (".rotary_emb.inv_freq",)


def released_key_to_pixellm(key: str) -> str | None:
    """Our state-dict key for a released key, or ``None`` for a key we drop on purpose."""
    if key.endswith(DROPPED_SUFFIXES):
        return None
    if key.startswith("lm_head."):
        return "language_model." + key
    for prefix in VISION_PREFIXES:
        if key.startswith(prefix):
            return "vision_tower." + key[len(prefix):]
    if not key.startswith("model."):
        return None
    rest = key[len("model."):]
    for name in PIXEL_MODULES:
        if rest.startswith(name + "."):
            if name == "prompt_encoder" and not rest.startswith(PROMPT_ENCODER_USED):
                return None
            return rest
    return "language_model.model." + rest


def convert_released_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a released state dict to ours. Returns ``(converted, dropped_keys)``."""
    converted, dropped = {}, []
    for key, value in state_dict.items():
        new = released_key_to_pixellm(key)
        if new is None:
            dropped.append(key)
        else:
            converted[new] = value
    return converted, dropped


def load_released_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, require_vision: bool = False
) -> list[str]:
    """Load a released state dict into ``model``; no missing or unexpected keys are tolerated
    except the new fusion parameters (and CLIP, when ``require_vision`` is False).

    Returns the dropped released keys. Raises ``InputError`` naming the offending keys.
    """
    converted, dropped = convert_released_state_dict(state_dict)
    own = model.state_dict()
    unexpected = sorted(k for k in converted if k not in own)
    if unexpected:
        raise InputError(f"{len(unexpected)} unexpected keys in released checkpoint, e.g. {unexpected[:3]}")
    mismatched = [k for k, v in converted.items() if tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise InputError(f"shape mismatch for {k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}")
    allowed = NEW_PARAMETER_PREFIXES + (() if require_vision else ("vision_tower.",))
    missing = sorted(k for k in own if k not in converted and not k.startswith(allowed))
    if missing:
        raise InputError(f"{len(missing)} keys missing from released checkpoint, e.g. {missing[:3]}")
    model.load_state_dict(converted, strict=False)
    return dropped
