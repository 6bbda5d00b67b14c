"""Projectors from CLIP features: LLM image tokens (``mm_projector``), decoder features
(``out_mm_projector``) and the decoder neck (``image_feature_neck``), with released shapes."""

from __future__ import annotations

from torch import nn
from transformers.activations import ACT2FN

from pixellm.model.common import LayerNorm2d


def build_projector(vision_dim: int, hidden_size: int, act: str = "gelu") -> nn.Sequential:
    """``Linear(C_v, 2H) -> act -> Linear(2H, H)`` (keys ``.0`` and ``.2`` as released)."""
    return nn.Sequential(
        nn.Linear(vision_dim, 2 * hidden_size), ACT2FN[act], nn.Linear(2 * hidden_size, hidden_size)
    )


def build_neck(hidden_size: int, out_dim: int) -> nn.Sequential:
    """``Conv1x1(H->C) -> LN2d -> Conv3x3(C->C) -> LN2d`` on ``B x H x G x G`` (no biases)."""
    return nn.Sequential(
        nn.Conv2d(hidden_size, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )
