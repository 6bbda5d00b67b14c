"""Optional full-resolution detail path (off in the released model).

At small input sizes the decoder's masks (4x the patch grid) are coarse. This path runs a few
dilated convolutions over the input pixels and adds, per target, the dot product of these
features with a projection of the target's finest-scale embedding to the upsampled mask logits.
Optionally the features also read the vision tower's patch tokens: a linear map decodes each token
to its patch's pixels (as a per-pixel linear head on the tokens tells a pixel's object category
apart, docs/demo-rounds.md), so that two touching objects of one colour get different features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on its gradient in channels-last layout. The features reach
    the loss through a per-target gather that returns a plain contiguous gradient; GELU's backward
    on a channels-last input with a contiguous gradient is ~5x slower than with matching layouts
    (4.0 against 0.8 ms for 16 x 8 x 64 x 64 floats, AVX2), and the demo's step pays it five
    times (docs/demo-rounds.md, fourteenth round)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class PixelDetailPath(nn.Module):
    """Args: channels (width of the pixel features), embed_dim (decoder width C), token_dim and
    patch_size (when given, the features also read patch tokens of that width, one per patch of
    that size), act (``"gelu"`` or ``"relu"``, after the stem and in each block)."""

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        token_dim: int | None = None,
        patch_size: int | None = None,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        activation = {"gelu": nn.GELU, "relu": nn.ReLU}[act]
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), activation())
        self.patch_size = patch_size
        self.unpatchify = (
            nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, channels * patch_size**2))
            if token_dim else None
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d), activation())
            for d in dilations
        )
        self.query = nn.Linear(embed_dim, channels)

    def features(self, pixel_values: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``B x 3 x S x S`` (and, with ``unpatchify``, patch tokens ``B x G*G x token_dim``,
        G = S / patch_size, row-major) -> ``B x D x S x S`` (channels-last strides)."""
        # oneDNN runs these few-channel convolutions ~1.6x faster, forward and backward, on
        # channels-last inputs (benchmarks/bench_detail_conv.py); the layout carries through.
        x = self.stem(pixel_values.contiguous(memory_format=torch.channels_last))
        if self.unpatchify is not None:
            if tokens is None:
                raise ValueError("this detail path reads patch tokens; pass tokens")
            b, n, _ = tokens.shape
            g = x.shape[-1] // self.patch_size
            if n != g * g:
                raise ValueError(f"{n} patch tokens for a {g} x {g} patch grid")
            per_patch = self.unpatchify(tokens.to(x.dtype)).transpose(1, 2).reshape(b, -1, g, g)
            # D*p*p channels per patch -> D channels per pixel
            x = x + F.pixel_shuffle(per_patch, self.patch_size).contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = x + block(x)
        return _ChannelsLastGrad.apply(x)

    def forward(self, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """features: ``T x D x S x S`` (gathered per target); embeddings: ``T x C`` -> ``T x S x S``."""
        q = self.query(embeddings)
        return torch.einsum("td,tdhw->thw", q, features) / q.shape[-1] ** 0.5
