"""The two used parts of SAM's prompt encoder: random Fourier positional encoding and `no_mask_embed`.

PixelLM never feeds points, boxes or masks; its prompt is the fused codebook embedding, which the
mask decoder receives directly. The released checkpoint's point / mask-downscaling weights are unused
and dropped by the importer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (SAM).

    Args:
        num_pos_feats: frequencies; the encoding has 2 * num_pos_feats channels.
        scale: standard deviation of the Gaussian frequency matrix (None or <= 0 -> 1.0).
    """

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: [..., 2] in [0, 1] -> [..., 2 * num_pos_feats]."""
        matrix = self.positional_encoding_gaussian_matrix
        coords = (2 * coords - 1).to(matrix.dtype) @ matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of an h x w grid of pixel centres: -> [2 * num_pos_feats, h, w]."""
        h, w = size
        grid = torch.ones((h, w), device=self.positional_encoding_gaussian_matrix.device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Holds `pe_layer` (image positional encoding) and `no_mask_embed` (dense prompt), released names.

    Args:
        embed_dim: decoder channel dimension C (must be even).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"embed_dim must be even for the positional encoding, got {embed_dim}")
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, h: int, w: int) -> torch.Tensor:
        """Positional encoding of the decoder's image grid: -> [1, C, h, w]."""
        return self.pe_layer((h, w)).unsqueeze(0)

    def dense_embedding(self, h: int, w: int) -> torch.Tensor:
        """The "no mask" dense prompt, broadcast (a view, no copy): -> [1, C, h, w]."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
