"""PixelLM: pixel reasoning with large multimodal models.

Public API (imported lazily so that ``import pixellm`` stays light)::

    from pixellm import PixelLMConfig, PixelLMForCausalLM, PixelLMProcessor, Predictor
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PixelLMConfig": "pixellm.model.configuration_pixellm",
    "PixelLMForCausalLM": "pixellm.model.modeling_pixellm",
    "PixelLMOutput": "pixellm.model.modeling_pixellm",
    "PixelLMProcessor": "pixellm.processing.processing_pixellm",
    "Predictor": "pixellm.infer.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixellm' has no attribute {name!r}")
