"""Base weights a fresh PixelLM starts from: a LLaVA (or any HF causal LM) folder and a CLIP folder.

The released recipe (docs/training.md) starts PixelLM-7B from LLaVA-Lightning-7B-v1-1 and
PixelLM-13B from llava-llama-2-13b-chat-lightning-preview. Those folders hold LLaMA weights plus
LLaVA's ``model.mm_projector`` under ``model_type: "llava"``, which transformers reads as its own
(different) LLaVA class, so the LLM config is rebuilt from the LLaMA fields of ``config.json``.

Every key and shape is checked before loading, so a wrong folder fails with one line naming the
file and the key instead of silently starting from random weights. The LLaVA projector is a single
``Linear(1024, H)``, which does not fit PixelLM's two-layer ``mm_projector``: like the released
training (whose LLaVA class replaces it by the MLP), PixelLM's projector then starts fresh. A
projector stored in PixelLM's layout (``model.mm_projector.{0,2}``) with matching shapes is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pixellm.errors import ConfigError, DataError
from pixellm.files import quiet_transformers

logger = logging.getLogger(__name__)

PROJECTOR_PREFIX = "model.mm_projector."
LINEAR_PROJECTOR_KEYS = {"model.mm_projector.weight", "model.mm_projector.bias"}  # LLaVA v1
IGNORED_PREFIXES = ("model.vision_tower.",)  # a LLaVA folder may carry CLIP; it comes from vision_weights
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # buffers older transformers saved; recomputed


@dataclass
class BaseLLM:
    """The loaded base LLM and what happened to the folder's other tensors."""

    model: Any  # a transformers causal LM (float32)
    text_config: dict[str, Any]
    projector: dict[str, torch.Tensor] = field(default_factory=dict)  # mm_projector state dict, or empty
    skipped: list[str] = field(default_factory=list)  # keys not used (LLaVA linear projector, buffers)
    files: list[str] = field(default_factory=list)


def base_text_config(folder: str | Path) -> dict[str, Any]:
    """The LLM config of ``folder`` as a dict: LLaMA fields for LLaVA / LLaMA folders, else the
    folder's own transformers config."""
    from pixellm.model.released import LLAMA_FIELDS, LLAMA_MODEL_TYPES, read_released_config

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{folder}: base_llm folder not found")
    raw = path / "config.json"
    if not raw.is_file():
        raise FileNotFoundError(f"{raw}: no config.json (base_llm must be an HF model folder)")
    try:
        model_type = json.loads(raw.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise DataError("not a JSON object", path=str(raw)) from err
    if model_type in LLAMA_MODEL_TYPES:
        cfg = read_released_config(path)
        text = {"model_type": "llama", "tie_word_embeddings": False}
        text.update({k: cfg[k] for k in LLAMA_FIELDS if cfg.get(k) is not None})
        if "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = bool(cfg["tie_word_embeddings"])
        return text
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(str(path)).to_dict()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot read the model config ({err})".splitlines()[0], path=str(raw)) from err


def checkpoint_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Key -> (shape, file) over all shards, without loading safetensors data."""
    from safetensors import safe_open

    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    part = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(state, dict):
                    raise DataError("weights file does not hold a state dict", path=str(path))
                part = {k: tuple(v.shape) for k, v in state.items()}
        except DataError:
            raise
        except Exception as err:  # corrupt or foreign file: name it
            raise DataError(f"cannot read weights ({type(err).__name__}: {err})".splitlines()[0], path=str(path)) from err
        for key, shape in part.items():
            if key in shapes:
                raise DataError(f"key {key!r} appears in two weight files", path=str(path))
            shapes[key] = (shape, path)
    return shapes


def _read_tensors(keys: list[str], shapes: dict[str, tuple[tuple[int, ...], Path]]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for key in keys:
        path = shapes[key][1]
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                out[key] = f.get_tensor(key)
        else:
            out[key] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)[key].clone()
    return out


def projector_shapes(vision_hidden: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """PixelLM's ``mm_projector`` (docs/architecture.md, "Released checkpoint layout"): Linear(V, 2H) -> GELU -> Linear(2H, H)."""
    return {"0.weight": (2 * hidden, vision_hidden), "0.bias": (2 * hidden,),
            "2.weight": (hidden, 2 * hidden), "2.bias": (hidden,)}


def load_base_llm(folder: str | Path, vision_hidden: int, text_config: dict[str, Any] | None = None) -> BaseLLM:
    """Load the causal LM of ``folder`` (float32) after checking every key and shape.

    ``vision_hidden``: CLIP width, to check a projector stored in PixelLM's layout.
    Raises ``DataError`` naming the file and the key for a missing, unexpected or mis-shaped key.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from pixellm.model.released import weight_files

    path = Path(folder)
    text = dict(text_config or base_text_config(path))
    files = weight_files(path)
    shapes = checkpoint_shapes(files)
    llm_config = AutoConfig.for_model(**text)
    with torch.device("meta"), quiet_transformers():
        expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(llm_config).state_dict().items()}
    want_projector = projector_shapes(vision_hidden, int(text["hidden_size"]))
    projector_keys, skipped = [], []
    for key, (shape, file) in sorted(shapes.items()):
        if key in LINEAR_PROJECTOR_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            skipped.append(key)
        elif key.startswith(PROJECTOR_PREFIX):
            name = key[len(PROJECTOR_PREFIX):]
            if name not in want_projector:
                raise DataError(f"unexpected key {key!r} (PixelLM's mm_projector has {sorted(want_projector)})",
                                path=str(file))
            if shape != want_projector[name]:
                raise DataError(f"key {key!r} has shape {shape}, PixelLM's mm_projector.{name} needs "
                                f"{want_projector[name]} (CLIP width {vision_hidden})", path=str(file))
            projector_keys.append(key)
        elif key not in expected:
            raise DataError(f"unexpected key {key!r} for a {text.get('model_type')} model", path=str(file))
        elif shape != expected[key]:
            raise DataError(f"key {key!r} has shape {shape}, {path / 'config.json'} gives {expected[key]}",
                            path=str(file))
    tied = bool(llm_config.tie_word_embeddings)
    missing = [k for k in expected if k not in shapes and not (tied and k == "lm_head.weight")]
    if missing:
        raise DataError(f"key {missing[0]!r} is missing from the weights ({len(missing)} missing)", path=str(path))
    if projector_keys and len(projector_keys) != len(want_projector):
        raise DataError(f"incomplete mm_projector: only {projector_keys}", path=str(shapes[projector_keys[0]][1]))
    if skipped and LINEAR_PROJECTOR_KEYS & set(skipped):
        logger.info("%s: LLaVA's linear mm_projector does not fit PixelLM's MLP projector; it starts fresh, "
                    "as in the released training", path)

    try:
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), config=llm_config, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"cannot load the weights ({err})".splitlines()[0], path=str(path)) from err
    if info.get("missing_keys"):
        key = sorted(info["missing_keys"])[0]
        raise DataError(f"key {key!r} was not loaded", path=str(path))
    projector = {k[len(PROJECTOR_PREFIX):]: v.float() for k, v in _read_tensors(projector_keys, shapes).items()}
    return BaseLLM(model, text, projector, skipped, [f.name for f in files])


def load_clip(folder: str | Path) -> tuple[Any, Any]:
    """``(CLIPVisionConfig, CLIPVisionModel)`` from a CLIPModel or CLIPVisionModel folder; a folder
    whose weights miss a vision-tower key is an error naming the key."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{folder}: vision_weights folder not found")
    try:
        with quiet_transformers():
            config = CLIPVisionConfig.from_pretrained(str(path))
            clip, info = CLIPVisionModel.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"not a CLIP model folder ({err})".splitlines()[0], path=str(path)) from err
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing:
        raise DataError(f"CLIP key {missing[0]!r} is missing from the weights ({len(missing)} missing)", path=str(path))
    if mismatched:
        raise DataError(f"CLIP key {mismatched[0][0]!r} has the wrong shape", path=str(path))
    return config, clip


def check_vision_width(base_config: Path, vision_hidden: int, vision_folder: str) -> None:
    """A LLaVA config records its CLIP width (``mm_hidden_size``); it must be this CLIP's."""
    try:
        raw = json.loads(base_config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    mm_hidden = raw.get("mm_hidden_size") if isinstance(raw, dict) else None
    if mm_hidden is not None and mm_hidden != vision_hidden:
        raise ConfigError(f"{base_config}: mm_hidden_size {mm_hidden} != hidden size {vision_hidden} of {vision_folder}")
