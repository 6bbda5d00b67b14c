"""LoRA adapters on the LLM through ``peft`` (injected in place, so module names stay).

``config.lora`` records the settings of an unmerged model; ``PixelLMForCausalLM`` re-injects the
adapters at construction so that ``from_pretrained`` loads an unmerged checkpoint exactly.
Training-side helpers (apply, merge) live in :mod:`pixellm.train.lora`.
"""

from __future__ import annotations

from typing import Any

import torch

from pixellm.errors import ConfigError

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def lora_settings(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: list[str] | None = None) -> dict:
    """The dict stored in ``config.lora`` (defaults of docs/training.md, "Recipe")."""
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


