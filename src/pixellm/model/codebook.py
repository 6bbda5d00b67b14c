"""Segmentation codebook: hidden states -> per-scale target embeddings.

``MaskFusion`` lives beside the decoder (``model/mask_decoder.py``) and is re-exported here.

``text_hidden_fcs`` keeps the released structure (``ModuleList[Sequential]``, keys ``0.0`` /
``0.2``). The fusion weights are registered parameters here (the released code kept them in
plain Python lists, so they were never trained or saved); initialised to 1/N and 1/L, which is
what the released model effectively used, so released checkpoints give unchanged outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from pixellm.model.mask_decoder import MaskFusion  # noqa: F401  (re-exported: the old import path)


def build_text_hidden_fcs(hidden_size: int, out_dim: int) -> nn.ModuleList:
    """``Linear(H, H) -> ReLU -> Linear(H, C) -> Dropout(0)`` wrapped as released."""
    return nn.ModuleList(
        [nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True),
                       nn.Linear(hidden_size, out_dim), nn.Dropout(0.0))]
    )


class TokenFusion(nn.Module):
    """Fuse the N token embeddings of each scale group into one vector per scale.

    Args:
        num_scales: L.
        num_tokens: N tokens per scale group.
        dim: embedding width C.
        mode: ``"weighted_sum"`` (weights ``[G, N]`` init 1/N) or ``"linear"`` (Linear(N*C, C)
            per group).
        shared: one group of N tokens serves all L scales (G = 1, output repeated per scale).
        learnable: whether the weighted-sum weights are trained.
    """

    def __init__(
        self, num_scales: int, num_tokens: int, dim: int, mode: str = "weighted_sum",
        shared: bool = False, learnable: bool = True,
    ) -> None:
        super().__init__()
        self.num_scales, self.num_tokens, self.mode, self.shared = num_scales, num_tokens, mode, shared
        groups = 1 if shared else num_scales
        if mode == "weighted_sum":
            self.weights = nn.Parameter(torch.full((groups, num_tokens), 1.0 / num_tokens),
                                        requires_grad=learnable)
        elif mode == "linear":
            self.linear = nn.ModuleList([nn.Linear(num_tokens * dim, dim) for _ in range(groups)])
        else:
            raise ValueError(f"unknown token fusion {mode!r}")

    def reset_parameters(self) -> None:
        if self.mode == "weighted_sum":
            with torch.no_grad():
                self.weights.fill_(1.0 / self.num_tokens)
        else:
            for lin in self.linear:
                lin.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: ``T x (G*N) x C`` in codebook order -> ``T x L x C``."""
        t, _, c = tokens.shape
        groups = tokens.reshape(t, -1, self.num_tokens, c)  # T x G x N x C
        if self.mode == "weighted_sum":
            fused = (groups * self.weights[None, :, :, None].to(groups.dtype)).sum(2)
        else:
            fused = torch.stack([lin(groups[:, g].flatten(1)) for g, lin in enumerate(self.linear)], 1)
        if self.shared:
            fused = fused.expand(t, self.num_scales, c)
        return fused
