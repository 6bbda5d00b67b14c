"""Multi-scale CLIP features: selected ``hidden_states`` (CLS dropped, no post-layernorm).

Padded patches are masked out of CLIP's attention, and CLIP's position table is interpolated
when the model input is larger than CLIP's native size (448 vs 336 for the released model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def interpolate_position_embeddings(weight: torch.Tensor, grid: int, mode: str = "correct") -> torch.Tensor:
    """Resize a CLIP position table ``[1 + g*g, C]`` to ``[1 + grid*grid, C]``.

    The returned rows are added in order to ``[CLS, patch 0, ..., patch grid*grid-1]``.

    ``mode="released"`` builds the table exactly as the released vision tower does (see
    ``docs/fidelity.md``): rows ``0 .. g*g-1`` (the CLS row, then every patch row but the last)
    are read as a ``g x g`` grid and resized *bilinearly* (``align_corners=False``) to
    ``grid x grid``, giving new rows ``0 .. grid*grid-1``; the old last row is appended. So the
    CLS token gets the grid's top-left cell and the last patch gets the old last patch row. We
    must reproduce this to give released checkpoints the image features they were trained on.

    ``mode="correct"`` keeps row 0 as the CLS embedding and resizes the ``g x g`` patch rows
    (bicubic), for new training.
    """
    n, dim = weight.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise ValueError(f"position table with {n} rows is not 1 + a square grid")
    if g == grid:
        return weight
    if mode == "released":
        head, tail, method = weight[:-1], weight[-1:], "bilinear"  # grid rows, then the old last row
    elif mode == "correct":
        head, tail, method = weight[1:], None, "bicubic"
    else:
        raise ValueError(f"unknown position interpolation {mode!r} (released | correct)")
    # The released tower resizes its fp32 table; do the same whatever the stored dtype.
    head = head.reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
    head = F.interpolate(head, size=(grid, grid), mode=method, align_corners=False)
    head = head.permute(0, 2, 3, 1).reshape(grid * grid, dim).to(weight.dtype)
    return torch.cat([head, tail] if tail is not None else [weight[:1], head], dim=0)


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
