"""Optional full-resolution detail path (off in the released model).

At small input sizes the decoder's masks (4x the patch grid) are coarse. This path runs a few
dilated convolutions over the input pixels and adds, per target, the dot product of these
features with a projection of the target's finest-scale embedding to the upsampled mask logits.
"""

from __future__ import annotations

import torch
from torch import nn


class PixelDetailPath(nn.Module):
    """Args: channels (width of the pixel features), embed_dim (decoder width C)."""

    def __init__(self, channels: int, embed_dim: int, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GELU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.GELU())
            for d in dilations
        )
        self.query = nn.Linear(embed_dim, channels)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` -> ``B x D x S x S`` (channels-last strides)."""
        # oneDNN runs these few-channel convolutions ~1.6x faster, forward and backward, on
        # channels-last inputs (benchmarks/bench_detail_conv.py); the layout carries through.
        x = self.stem(pixel_values.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = x + block(x)
        return x

    def forward(self, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """features: ``T x D x S x S`` (gathered per target); embeddings: ``T x C`` -> ``T x S x S``."""
        q = self.query(embeddings)
        return torch.einsum("td,tdhw->thw", q, features) / q.shape[-1] ** 0.5
