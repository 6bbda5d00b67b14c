"""Multi-scale CLIP features: selected ``hidden_states`` (CLS dropped, no post-layernorm).

Padded patches are masked out of CLIP's attention, and CLIP's position table is interpolated
when the model input is larger than CLIP's native size (448 vs 336 for the released model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def interpolate_position_embeddings(weight: torch.Tensor, grid: int, mode: str = "correct") -> torch.Tensor:
    """Resize a CLIP position table ``[1 + g*g, C]`` to ``[1 + grid*grid, C]`` (bicubic).

    ``mode="released"`` reproduces how the released checkpoint was made: the *last* row is
    treated as the CLS embedding and the first ``g*g`` rows (real CLS + all patches but the last)
    as the patch grid. ``"correct"`` uses row 0 as CLS.
    """
    n, dim = weight.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise ValueError(f"position table with {n} rows is not 1 + a square grid")
    if g == grid:
        return weight
    if mode == "released":
        cls, patches = weight[-1:], weight[:-1]
    else:
        cls, patches = weight[:1], weight[1:]
    patches = patches.reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, dim).to(weight.dtype)
    return torch.cat([cls, patches], dim=0)


def clip_multiscale_features(
    clip: nn.Module,
    pixel_values: torch.Tensor,
    valid_patches: torch.Tensor | None,
    select_layers: list[int],
    pos_interpolation: str = "correct",
) -> list[torch.Tensor]:
    """Run CLIP's embeddings and encoder layers; return the selected hidden states.

    Args:
        clip: a ``transformers.CLIPVisionModel`` (frozen).
        pixel_values: ``B x 3 x S x S``.
        valid_patches: bool ``B x G x G`` or None (no masking).
        select_layers: indices into CLIP's ``hidden_states`` (0 = embeddings, -1 = last layer).
    Returns:
        one ``B x G*G x C_v`` tensor per selected layer (CLS dropped), in ``select_layers`` order.
    """
    emb = clip.embeddings
    dtype = emb.patch_embedding.weight.dtype
    patches = emb.patch_embedding(pixel_values.to(dtype))  # B x C x G x G
    b, dim, grid, _ = patches.shape
    x = patches.flatten(2).transpose(1, 2)
    pos = interpolate_position_embeddings(emb.position_embedding.weight, grid, pos_interpolation)
    x = torch.cat([emb.class_embedding.to(dtype).expand(b, 1, dim), x], dim=1) + pos[None].to(dtype)
    x = clip.pre_layrnorm(x)

    mask = None
    if valid_patches is not None and not bool(valid_patches.all()):
        keep = torch.cat([valid_patches.new_ones(b, 1), valid_patches.flatten(1)], dim=1)  # CLS stays
        mask = torch.zeros(b, 1, 1, keep.shape[1], dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~keep[:, None, None, :], torch.finfo(x.dtype).min)

    layers = clip.encoder.layers
    n_states = len(layers) + 1
    wanted = [idx % n_states for idx in select_layers]
    states = {0: x} if 0 in wanted else {}
    for i, layer in enumerate(layers[: max(wanted)], start=1):
        x = layer(x, mask)
        if isinstance(x, tuple):  # older transformers return tuples
            x = x[0]
        if i in wanted:
            states[i] = x
    return [states[i][:, 1:] for i in wanted]
