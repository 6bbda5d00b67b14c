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

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pixellm.errors import ConfigError, DataError
from pixellm.files import quiet_transformers
from pixellm.model.released import LLAMA_FIELDS, check_index, load_weights, read_released_config, weight_files

logger = logging.getLogger(__name__)

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
