"""LoRA on the LLM through ``peft``: inject, record in the config, merge, and load unmerged.

The adapters are injected in place (``peft.inject_adapter_in_model``) into
``model.language_model``, so the PixelLM module tree and the released attribute names stay as
they are; parameter names gain ``.base_layer`` / ``.lora_A.default`` / ``.lora_B.default``. The
settings are recorded in ``model.config.lora`` so a saved, unmerged checkpoint says how to rebuild
its adapters (:func:`load_pixellm`). :func:`merge_lora` folds them into the base weights and
removes them: the result saves as a plain HF-format model (the released layout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pixellm.errors import ConfigError
from pixellm.model.lora import LORA_KEYS, has_lora, inject_lora, lora_settings

__all__ = ["LORA_KEYS", "apply_lora", "has_lora", "inject_lora", "load_pixellm", "lora_settings", "merge_checkpoint", "merge_lora"]

if TYPE_CHECKING:
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

def apply_lora(model: PixelLMForCausalLM, settings: dict[str, Any]) -> PixelLMForCausalLM:
    """Inject LoRA into ``model.language_model`` and record ``settings`` in ``model.config.lora``.

    Call before ``model.configure_trainable()`` (which unfreezes every ``lora_`` parameter).
    """
    if has_lora(model):
        raise ConfigError("the model already has LoRA adapters")
    inject_lora(model.language_model, settings)
    model.config.lora = dict(settings)
    return model


def merge_lora(model: PixelLMForCausalLM) -> PixelLMForCausalLM:
    """Fold every adapter into its base weight, replace the LoRA layers by their base layers and
    clear ``config.lora``: ``save_pretrained`` then writes a plain HF-format model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            replaced += 1
    if replaced == 0 and model.config.lora:
        raise ConfigError("config.lora is set but the model has no LoRA layers to merge")
    model.config.lora = None
    return model


def load_pixellm(path: str | os.PathLike, merge: bool = False, dtype: torch.dtype | None = None) -> PixelLMForCausalLM:
    """Load a saved PixelLM model, merged or with LoRA adapters (``config.lora`` set).

    Every checkpoint goes through ``PixelLMForCausalLM.from_pretrained``: when ``config.lora`` is
    set, the model's constructor injects the adapters before the weights are loaded, so the
    adapter weights load like any other. ``dtype`` casts after loading; ``merge=True`` merges the
    adapters afterwards.
    """
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    # config.lora makes PixelLMForCausalLM rebuild the adapters before the weights are loaded
    model = PixelLMForCausalLM.from_pretrained(str(folder))
    if dtype is not None:
        model.to(dtype)
    if merge:
        merge_lora(model)
    return model.eval()


def merge_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Load a saved model (+ processor) with LoRA adapters, merge them and save a plain HF-format
    model (and the processor, when ``src`` has one) to ``dst``."""
    model = load_pixellm(src, merge=True)
    dst = Path(dst)
    model.save_pretrained(str(dst))
    if (Path(src) / "processor_config.json").is_file():
        from pixellm.build import load_processor

        load_processor(src).save_pretrained(dst)
    return dst
