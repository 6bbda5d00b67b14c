"""Reading released checkpoint folders, and the key mapping from the released PixelLM
checkpoints (``hf_model/``, LoRA merged) to ours.

Folder readers (shared by ``pixellm.tools.convert_released`` and the base-LLM loader of
``pixellm.train.base``, which reads LLaVA folders of the same format): :func:`read_released_config`
(a LLaVA-style ``config.json``; :data:`LLAMA_FIELDS` are its LLaMA sizes), :func:`weight_files`
(``*.safetensors`` or ``pytorch_model*.bin``, shard indexes checked), :func:`load_weights`,
:func:`check_index`.

Released layout (docs/architecture.md, "Released checkpoint layout"): LLaMA keys are the standard HF ones under ``model.`` /
``lm_head.``; the pixel modules sit under ``model.<name>``. CLIP is not in the checkpoint.
We keep the released module names, so the mapping is a prefix change; the prompt encoder's
point / mask-downscaling weights are unused by PixelLM and dropped, and so are LLaMA's rotary
``inv_freq`` buffers, which checkpoints saved by older transformers hold (they are recomputed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixellm.errors import DataError, InputError

# Released ``config.json`` fields that are LLaMA sizes (the rest are LLaVA / PixelLM settings).
LLAMA_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act",
    "attention_bias", "mlp_bias", "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range",
)
REQUIRED_LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
LLAMA_MODEL_TYPES = ("llava", "llama", "llava_llama")

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


# -- released folders -----------------------------------------------------------------------


def read_released_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (is --src a released hf_model folder?)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg} at line {err.lineno})", path=str(path)) from err
    if not isinstance(cfg, dict):
        raise DataError("expected a JSON object", path=str(path))
    model_type = cfg.get("model_type", "llava")
    if model_type not in LLAMA_MODEL_TYPES:
        raise DataError(f"field 'model_type': {model_type!r} is not a LLaMA-based release", path=str(path))
    for name in REQUIRED_LLAMA_FIELDS:
        if not isinstance(cfg.get(name), int):
            raise DataError(f"missing or non-integer field '{name}'", path=str(path))
    return cfg


# Shard indexes written by ``save_pretrained`` when a checkpoint is split.
INDEX_FILES = (("*.safetensors", "model.safetensors.index.json"), ("pytorch_model*.bin", "pytorch_model.bin.index.json"))


def _read_index(path: Path) -> dict[str, str]:
    """``weight_map`` (key -> shard file name) of a shard index."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg} at line {err.lineno})", path=str(path)) from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DataError("missing or malformed field 'weight_map'", path=str(path))
    return weight_map


def weight_files(src: Path) -> list[Path]:
    """The checkpoint files: every ``*.safetensors`` if any, else every ``pytorch_model*.bin``.

    A shard index (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``) decides
    which shards belong to the checkpoint; a shard it names that is absent (an interrupted
    download) is an error naming the shard.
    """
    for pattern, index in INDEX_FILES:
        if (src / index).is_file():
            names = sorted(set(_read_index(src / index).values()))
            absent = [n for n in names if not (src / n).is_file()]
            if absent:
                raise DataError(f"shard {absent[0]} named in the index is missing", path=str(src / index))
            return [src / n for n in names]
        files = sorted(src.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"{src}: no *.safetensors or pytorch_model*.bin weights")


def check_index(src: Path, files: list[Path], state: dict[str, torch.Tensor]) -> None:
    """The loaded keys are exactly the shard index's (when there is one)."""
    index = next((src / i for p, i in INDEX_FILES if files and files[0].match(p) and (src / i).is_file()), None)
    if index is None:
        return
    weight_map = _read_index(index)
    absent = sorted(k for k in weight_map if k not in state)
    if absent:
        raise DataError(f"key {absent[0]!r} named in the index is in no shard ({weight_map[absent[0]]})", path=str(index))


def load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Merge the shards into one state dict (``.bin`` files with ``weights_only=True``)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                part = load_file(str(path))
            else:
                part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # corrupt or foreign file: name it
            raise DataError(f"cannot read weights ({type(err).__name__}: {err})".splitlines()[0], path=str(path)) from err
        if not isinstance(part, dict):
            raise DataError("weights file does not hold a state dict", path=str(path))
        clash = next((k for k in part if k in state), None)
        if clash is not None:
            raise DataError(f"key {clash!r} appears in two weight files", path=str(path))
        state.update(part)
    return state
