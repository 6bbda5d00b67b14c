"""Build the model and processor a training run starts from, and choose what trains.

Three starting points:
- ``init_from``: a saved PixelLM folder (model + processor; LoRA merged or not);
- ``base_llm`` (+ ``vision_weights``): an HF causal LM folder (e.g. LLaVA-7B) and a CLIP vision
  folder, assembled with fresh pixel modules: the released recipe;
- neither: a randomly initialised preset (``tiny`` for the demo), seeded with ``cfg.seed`` so a
  resumed run rebuilds exactly the same frozen weights; ``vision_weights`` (a CLIP vision folder,
  e.g. the demo's stage-1 tower) replaces its random vision tower.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from pixellm.errors import ConfigError
from pixellm.train.config import TrainConfig

if TYPE_CHECKING:
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM
    from pixellm.processing.processing_pixellm import PixelLMProcessor


def _from_base(cfg: TrainConfig) -> tuple[PixelLMForCausalLM, PixelLMProcessor]:
    """Fresh pixel modules on a base LLM (LLaVA layout or any HF causal LM) and CLIP, both loaded
    from local folders with every key checked (``pixellm.train.base``)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from pixellm.build import build_pixellm
    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.train.base import base_text_config, check_vision_width, load_base_llm, load_clip

    text_config = base_text_config(cfg.base_llm)
    overrides = dict(cfg.model_overrides)
    clip = None
    if cfg.vision_weights:
        vision_config, clip = load_clip(cfg.vision_weights)
        check_vision_width(Path(cfg.base_llm) / "config.json", vision_config.hidden_size, cfg.vision_weights)
        overrides["vision_config"] = vision_config.to_dict()
        overrides["vision_tower"] = cfg.vision_weights
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base_llm)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{cfg.base_llm}: cannot load the tokenizer ({err})".splitlines()[0]) from err
    # Build the pixel modules around a 0-layer stand-in LLM: a random full-size LLM (28 GB for
    # 7B in fp32) would be thrown away at once.
    stub = {k: v for k, v in text_config.items() if k != "layer_types"}
    stub["num_hidden_layers"] = 0
    pcfg = PixelLMConfig.from_preset(cfg.preset, text_config=stub, **overrides)
    model, processor = build_pixellm(pcfg, tokenizer, max_length=cfg.max_length, system_prompt=cfg.system_prompt)
    base = load_base_llm(cfg.base_llm, pcfg.vision_config.hidden_size, text_config)
    model.language_model = base.model
    if base.projector:
        model.mm_projector.load_state_dict(base.projector)
    # New tokens get new (trainable) embedding rows; a vocabulary already large enough is kept.
    if len(tokenizer) > model.language_model.get_input_embeddings().weight.shape[0]:
        model.language_model.resize_token_embeddings(len(tokenizer))
    model.config.text_config = copy.deepcopy(model.language_model.config)
    if clip is not None:
        model.vision_tower.load_state_dict(clip.state_dict())
    return model, processor


def build_model(cfg: TrainConfig) -> tuple[PixelLMForCausalLM, PixelLMProcessor]:
    """Model (LoRA applied, trainable set chosen, train mode) and processor for ``cfg``."""
    from pixellm.build import build_pixellm, load_processor
    from pixellm.train.lora import apply_lora, has_lora, load_pixellm, lora_settings

    torch.manual_seed(cfg.seed)  # the same random frozen weights on every process and resume
    if cfg.init_from:
        model = load_pixellm(cfg.init_from)
        processor = load_processor(cfg.init_from)
    elif cfg.base_llm:
        model, processor = _from_base(cfg)
    else:  # the tiny tokenizer; its ids and size go into the preset's config (pixellm.build)
        model, processor = build_pixellm(
            cfg.preset, max_length=cfg.max_length, system_prompt=cfg.system_prompt, **cfg.model_overrides
        )
        if cfg.vision_weights:  # e.g. a stage-1 tower (pixellm.train.vision_pretrain)
            load_vision_weights(model, cfg.vision_weights)
    # the question convention of this run's data (pixellm.train.data), saved with the model
    processor.instruction = cfg.instruction
    if cfg.lora.enabled and not has_lora(model):
        apply_lora(model, lora_settings(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules))
    set_trainable(model, cfg.trainable)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    return model, processor


def load_vision_weights(model: PixelLMForCausalLM, folder: str) -> None:
    """Copy a CLIP vision folder into ``model.vision_tower``; its config must equal the preset's
    vision config (a one-line error names the first field that differs)."""
    from pixellm.train.base import load_clip

    config, clip = load_clip(folder)
    mine = model.config.vision_config.to_dict()
    for key, value in config.to_dict().items():
        if key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "patch_size", "image_size", "num_channels") and mine.get(key) != value:
            raise ConfigError(f"{folder}: vision {key} is {value}, the model's is {mine.get(key)}")
    model.vision_tower.load_state_dict(clip.state_dict())


def enable_gradient_checkpointing(model: PixelLMForCausalLM) -> None:
    """Checkpoint every decoder layer of the LLM and every CLIP encoder layer (transformers'
    ``GradientCheckpointingLayer``s). Non-reentrant ``torch.utils.checkpoint``: it works when the
    layer inputs need no grad (frozen embeddings), with LoRA and under FSDP2, and it replays the
    saved RNG state, so dropout masks (LoRA dropout) are the same in the recomputation."""
    model.activation_checkpointing_enable({"use_reentrant": False})


def set_trainable(model: PixelLMForCausalLM, mode: str) -> None:
    """``pixellm``: docs/training.md recipe (``model.configure_trainable``); ``all_but_vision``: also the
    whole LLM; ``all``: every parameter (the unused IoU head stays frozen: it never gets a grad)."""
    model.configure_trainable()
    if mode == "pixellm":
        return
    if mode not in ("all_but_vision", "all"):
        raise ConfigError(f"trainable: unknown mode {mode!r}")
    for p in model.language_model.parameters():
        p.requires_grad_(True)
    if mode == "all":
        for p in model.vision_tower.parameters():
            p.requires_grad_(True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (what a checkpoint must hold to resume)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
