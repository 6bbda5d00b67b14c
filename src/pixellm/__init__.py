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

# Imported with a public name: ``PixelLMProcessor.from_pretrained`` reads a model folder's
# ``config.json`` through ``AutoConfig``, which must know "pixellm" (pixellm.processing does not
# import the model; this package root sits above every stage).
_ALSO_IMPORT = {"PixelLMProcessor": "pixellm.model.configuration_pixellm"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name in _ALSO_IMPORT:
            importlib.import_module(_ALSO_IMPORT[name])
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixellm' has no attribute {name!r}")
