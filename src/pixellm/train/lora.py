"""LoRA on the LLM through ``peft``: inject, record in the config, merge, and load unmerged.

The adapters are injected in place (``peft.inject_adapter_in_model``) into
``model.language_model``, so the PixelLM module tree and the released attribute names stay as
they are; parameter names gain ``.base_layer`` / ``.lora_A.default`` / ``.lora_B.default``. The
settings are recorded in ``model.config.lora`` so a saved, unmerged checkpoint says how to rebuild
its adapters (:func:`load_pixellm`). :func:`merge_lora` folds them into the base weights and
removes them: the result saves as a plain HF-format model (the released layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pixellm.errors import ConfigError

if TYPE_CHECKING:
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def lora_settings(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: list[str] | None = None) -> dict:
    """The dict stored in ``config.lora`` (SPEC section 1 defaults)."""
    return {"r": int(r), "alpha": int(alpha), "dropout": float(dropout),
            "target_modules": list(target_modules or ["q_proj", "v_proj"])}


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def inject_lora(language_model: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """Add LoRA adapters (``settings`` as from :func:`lora_settings`) to an HF causal LM, in place."""
    from peft import LoraConfig, inject_adapter_in_model

    missing = [k for k in LORA_KEYS if k not in settings]
    if missing:
        raise ConfigError(f"config.lora lacks {missing} (needs {list(LORA_KEYS)})")
    targets = list(settings["target_modules"])
    names = {n.rsplit(".", 1)[-1] for n, _ in language_model.named_modules()}
    absent = [t for t in targets if t not in names]
    if absent:
        raise ConfigError(f"lora.target_modules {absent} not found in {type(language_model).__name__}")
    config = LoraConfig(
        r=int(settings["r"]), lora_alpha=int(settings["alpha"]), lora_dropout=float(settings["dropout"]),
        target_modules=targets, bias="none",
    )
    return inject_adapter_in_model(config, language_model)


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


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(folder / shard)))
    return state


def load_pixellm(path: str | os.PathLike, merge: bool = False, dtype: torch.dtype | None = None) -> PixelLMForCausalLM:
    """Load a saved PixelLM model, merged or with LoRA adapters (``config.lora`` set).

    Plain checkpoints go through ``PixelLMForCausalLM.from_pretrained``. Unmerged ones are built
    from the config, adapters injected, then loaded strictly (no missing or unexpected keys);
    ``merge=True`` merges them afterwards.
    """
    from pixellm.model.configuration_pixellm import PixelLMConfig
    from pixellm.model.modeling_pixellm import PixelLMForCausalLM

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    config = PixelLMConfig.from_pretrained(str(folder))
    if not config.lora:
        return PixelLMForCausalLM.from_pretrained(str(folder), dtype=dtype) if dtype else \
            PixelLMForCausalLM.from_pretrained(str(folder))
    settings = dict(config.lora)
    config.lora = None  # apply_lora records it again
    model = PixelLMForCausalLM(config)
    apply_lora(model, settings)
    state = _read_state_dict(folder)
    result = model.load_state_dict(state, strict=False)
    # Tied / non-persistent entries aside, every key must match.
    missing = [k for k in result.missing_keys if not k.endswith("inv_freq")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{folder}: LoRA checkpoint does not match its config "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
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
        from pixellm.processing.processing_pixellm import PixelLMProcessor

        PixelLMProcessor.from_pretrained(src).save_pretrained(dst)
    return dst
