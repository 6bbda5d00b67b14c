"""Multi-scale CLIP features: selected ``hidden_states`` (CLS dropped, no post-layernorm).

Padded patches are masked out of CLIP's attention, and CLIP's position table is interpolated
when the model input is larger than CLIP's native size (448 vs 336 for the released model).
"""

from __future__ import annotations

import hashlib

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


def _active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type now; None when it is off (the live
    state, where ``pixellm.train.precision.autocast_dtype`` maps a ``mixed_precision`` setting)."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def tower_digest(tower: nn.Module) -> str:
    """A hash of a tower's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in tower.state_dict().items():
        t = t.detach().contiguous().cpu()
        h.update(repr((name, tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FrozenVisionCache:
    """The selected hidden states of a *frozen* vision tower, kept per image in memory.

    A training run sees each image several times (the demo: 17,600 questions on 4,000 images);
    with the tower frozen, running it again on the same pixels gives the same features, so they
    are kept. An entry is keyed by a hash of the image's pixels, its valid-patch mask, the dtype
    and the autocast state, so any other input is a miss. Entries are added until ``max_bytes``
    is reached; after that the cache is only read. Results equal the uncached ones up to floating
    point rounding (a miss runs the tower on the batch's missing images only).

    Whoever attaches a cache (``PixelLMForCausalLM.vision_cache``) guarantees that the tower does
    not change while it is attached: the trainer does so only when no tower parameter trains.
    """

    def __init__(self, max_bytes: int, tower_digest: str | None = None) -> None:
        self.max_bytes = int(max_bytes)
        # which tower the entries belong to, when they were added from outside (:meth:`add`):
        # the trainer refuses to attach the cache to any other (:func:`tower_digest`)
        self.tower_digest = tower_digest
        # the autocast dtype (None: off) of the features added from outside, if any were
        self.added = False
        self.added_autocast: torch.dtype | None = None
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, float]:
        looked = self.hits + self.misses
        return {"images": len(self), "mib": round(self.bytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / looked, 4) if looked else 0.0}

    @staticmethod
    def _key(pixels: torch.Tensor, valid: torch.Tensor | None) -> bytes:
        autocast = _active_autocast_dtype(pixels.device.type)
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((tuple(pixels.shape), pixels.dtype, autocast)).encode())
        h.update(pixels.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
        if valid is not None:
            h.update(valid.detach().to(torch.uint8).cpu().numpy().tobytes())
        return h.digest()

    def _store(self, key: bytes, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = [r.clone() for r in rows]  # own storage: not a view of the batch
        size = sum(r.numel() * r.element_size() for r in rows)
        if key not in self._entries and self.bytes + size <= self.max_bytes:
            self._entries[key] = rows
            self.bytes += size
        return rows

    def add(self, pixel_values: torch.Tensor, valid_patches: torch.Tensor | None,
            states: list[torch.Tensor]) -> None:
        """Keep features computed elsewhere (``clip_multiscale_features`` of these images, one
        tensor per selected layer, under the autocast state the cache will be read in): the demo's
        stage 1 has run its trained tower over the training images already. Set ``tower_digest``
        so that the trainer checks that stage 2 loads the same tower."""
        self.added, self.added_autocast = True, _active_autocast_dtype(pixel_values.device.type)
        for i in range(pixel_values.shape[0]):
            key = self._key(pixel_values[i], None if valid_patches is None else valid_patches[i])
            self._store(key, [s[i] for s in states])

    def features(
        self,
        clip: nn.Module,
        pixel_values: torch.Tensor,
        valid_patches: torch.Tensor | None,
        select_layers: list[int],
        pos_interpolation: str = "correct",
    ) -> list[torch.Tensor]:
        """``clip_multiscale_features`` of the batch, from the cache where it can."""
        b = pixel_values.shape[0]
        keys = [self._key(pixel_values[i], None if valid_patches is None else valid_patches[i]) for i in range(b)]
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        fresh: dict[bytes, list[torch.Tensor]] = {}
        if missing:
            idx = torch.tensor(missing, device=pixel_values.device)
            with torch.no_grad():
                states = clip_multiscale_features(
                    clip, pixel_values[idx], None if valid_patches is None else valid_patches[idx],
                    select_layers, pos_interpolation,
                )
            for j, i in enumerate(missing):
                fresh[keys[i]] = self._store(keys[i], [s[j] for s in states])
        self.hits += b - len(missing)
        self.misses += len(missing)
        found = [fresh[k] if k in fresh else self._entries[k] for k in keys]
        return [torch.stack([rows[n] for rows in found]) for n in range(len(select_layers))]
