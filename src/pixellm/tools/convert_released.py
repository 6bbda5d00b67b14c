"""Import a released PixelLM ``hf_model/`` folder (LoRA merged) into this project's format.

The released folder holds a LLaVA-style ``config.json`` (LLaMA sizes under ``model_type``
``"llava"``), the weights (``*.safetensors`` or ``pytorch_model*.bin``, maybe sharded) and the
tokenizer; CLIP is not in it and comes from ``--vision``. Steps:

1. our ``PixelLMConfig``: the released preset values (N=3, L=2, layers [-2, -11], 448 px,
   "released" position-embedding interpolation), the LLaMA sizes of ``config.json`` and the CLIP
   config of ``--vision``; the token ids and the vocabulary size come from the released tokenizer
   through ``pixellm.build`` (the step training uses), and must agree with the checkpoint;
2. the released keys are renamed with ``pixellm.model.released`` and checked there (no missing,
   unexpected or mis-shaped key) against a model built on the meta device;
3. ``PixelLMForCausalLM.from_pretrained(None, config=..., state_dict=...)`` assembles the model
   (the fusion weights the release lacks start at 1/N and 1/L, as the released code used), and
   ``save_pretrained`` writes it with the processor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pixellm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Released ``config.json`` fields that are LLaMA sizes (the rest are LLaVA / PixelLM settings).
LLAMA_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act",
    "attention_bias", "mlp_bias", "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range",
)
REQUIRED_LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
LLAMA_MODEL_TYPES = ("llava", "llama", "llava_llama")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ConvertSummary:
    """What the import did (printed by the CLI)."""

    out: str
    weight_files: list[str]
    released_tensors: int
    vision_tensors: int
    dropped_keys: list[str] = field(default_factory=list)  # unused prompt-encoder weights
    initialised: list[str] = field(default_factory=list)  # parameters absent from the release
    dtype: str = ""
    processor_saved: bool = False


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports: the checks here say what matters in one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


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


def _load_tokenizer(src: Path) -> Any:
    """The released tokenizer, or None when the folder has no tokenizer files."""
    if not any((src / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        logger.warning("%s: no tokenizer files; assuming the released token layout", src)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(src))


def build_config(released: dict[str, Any], vision: str, src: Path, preset: str = "pixellm-7b") -> tuple[Any, Any]:
    """``(PixelLMConfig, PixelLMProcessor or None)`` for a released config and a CLIP folder.

    The token ids and the vocabulary come from ``pixellm.build`` (the step training uses too): the
    tokenizer gets the added tokens (a released one has them: ids unchanged) and its size must be
    the checkpoint's vocabulary. Without tokenizer files the added tokens are taken to end the
    checkpoint's vocabulary (the released layout).
    """
    from transformers import CLIPVisionConfig

    from pixellm.build import build_processor, register_appended_tokens
    from pixellm.model.configuration_pixellm import PixelLMConfig

    try:
        with quiet_transformers():
            vision_config = CLIPVisionConfig.from_pretrained(vision)
    except OSError as err:
        raise FileNotFoundError(f"{vision}: not a CLIP model folder ({err})".splitlines()[0]) from err
    mm_hidden = released.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision_config.hidden_size:
        raise ConfigError(
            f"{src}/config.json: mm_hidden_size {mm_hidden} != hidden size {vision_config.hidden_size} of {vision}"
        )
    text = {"model_type": "llama", "tie_word_embeddings": False}
    text.update({k: released[k] for k in LLAMA_FIELDS if released.get(k) is not None})
    overrides: dict[str, Any] = {"text_config": text, "vision_config": vision_config.to_dict(), "vision_tower": str(vision)}
    # PixelLM settings the release may record (the authors' argument names); defaults = released.
    if released.get("seg_token_num") is not None:
        overrides["num_tokens_per_scale"] = int(released["seg_token_num"])
    if released.get("resize_vision_tower_size") is not None:
        overrides["image_size"] = int(released["resize_vision_tower_size"])
    if released.get("out_dim") is not None:
        overrides["decoder_dim"] = int(released["out_dim"])
    config = PixelLMConfig.from_preset(preset, **overrides)
    scales = released.get("image_feature_scale_num")
    if scales is not None and int(scales) != config.num_scales:
        raise ConfigError(f"{src}/config.json: image_feature_scale_num {scales} is not supported (the release uses 2)")
    vocab_size = config.text_config.vocab_size
    tokenizer = _load_tokenizer(src)
    if tokenizer is None:  # the added tokens end the checkpoint's vocabulary
        register_appended_tokens(config, vocab_size - config.num_codebook_tokens - 2)
        return config, None
    processor = build_processor(config, tokenizer)
    if config.text_config.vocab_size != vocab_size:
        raise ConfigError(
            f"{src}: tokenizer has {len(tokenizer)} tokens (the {config.num_codebook_tokens + 2} added ones "
            f"included) but the checkpoint's vocabulary is {vocab_size}"
        )
    return config, processor


def convert_released(
    src: str | os.PathLike, vision: str, out: str | os.PathLike, dtype: str = "auto"
) -> ConvertSummary:
    """Convert a released ``hf_model`` folder plus a CLIP folder (or hub name) into ``out``.

    ``dtype``: ``auto`` keeps the checkpoint's floating dtype, else float32 / bfloat16 / float16.
    """
    from transformers import CLIPVisionModel

    from pixellm.model.modeling_pixellm import PixelLMForCausalLM
    from pixellm.model.released import (
        NEW_PARAMETER_PREFIXES,
        convert_released_state_dict,
        load_released_state_dict,
    )

    src_path = Path(src)
    if not src_path.is_dir():
        raise FileNotFoundError(f"{src}: not a directory")
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    released_cfg = read_released_config(src_path)
    config, processor = build_config(released_cfg, vision, src_path)
    files = weight_files(src_path)
    released = load_weights(files)
    check_index(src_path, files, released)

    # Validate names and shapes with the model engineer's loader on a meta model (no memory);
    # copying into meta tensors is a no-op whose warning is expected here.
    with torch.device("meta"):
        skeleton = PixelLMForCausalLM(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            load_released_state_dict(skeleton, released)
        except Exception as err:
            raise DataError(str(err), path=str(src_path)) from err
    converted, dropped = convert_released_state_dict(released)

    with quiet_transformers():
        clip = CLIPVisionModel.from_pretrained(vision)
    clip_state = {"vision_tower." + k: v for k, v in clip.state_dict().items()}
    expected_clip = {k for k in skeleton.state_dict() if k.startswith("vision_tower.")}
    if set(clip_state) != expected_clip:
        raise ConfigError(f"{vision}: CLIP weights do not match the vision tower layout")
    converted.update(clip_state)
    initialised = sorted(k for k in skeleton.state_dict() if k.startswith(NEW_PARAMETER_PREFIXES) and k not in converted)

    if dtype == "auto":
        floats = [v.dtype for v in released.values() if v.is_floating_point()]
        torch_dtype = max(set(floats), key=floats.count) if floats else torch.float32
    else:
        torch_dtype = DTYPES[dtype]
    with quiet_transformers():
        model = PixelLMForCausalLM.from_pretrained(None, config=config, state_dict=converted, dtype=torch_dtype)
    out_path = Path(out)
    model.save_pretrained(out_path)
    if processor is not None:
        processor.save_pretrained(out_path)
    return ConvertSummary(
        out=str(out_path), weight_files=[f.name for f in files], released_tensors=len(released),
        vision_tensors=len(clip_state), dropped_keys=sorted(dropped), initialised=initialised,
        dtype=str(torch_dtype).replace("torch.", ""), processor_saved=processor is not None,
    )
