"""Pad per-sample encodings (``PixelLMProcessor.encode_example``) into one batch.

The output follows the batch contract of ``docs/architecture.md`` (the keyword arguments of
``PixelLMForCausalLM.forward``) plus ``skipped``: the number of ``None`` examples, for callers
that drop bad samples instead of replacing them (the training dataset replaces them, see
``pixellm.data.dataset``). Pop ``skipped`` before calling the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pixellm.conventions import IGNORE_INDEX
from pixellm.errors import InputError


def _pad(seqs: list[torch.Tensor], value: int, length: int, left: bool) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            out[i, length - len(s) :] = s
        else:
            out[i, : len(s)] = s
    return out


def collate(
    examples: Sequence[dict[str, Any] | None], pad_token_id: int, padding_side: str = "right"
) -> dict[str, Any]:
    """Collate examples into a batch dict; ``None`` examples are skipped and counted.

    Each example holds ``input_ids`` [T], optional ``attention_mask`` [T] (default all ones),
    optional ``labels`` [T], ``pixel_values`` [3, S, S], ``resized_size`` [2], ``original_size``
    [2], optional ``masks`` [K, H, W] and optional ``text_only`` (True: trained without masks).

    Returns:
        ``input_ids`` / ``attention_mask`` / ``labels`` Long [B, T] (padding: pad id / 0 / -100),
        ``pixel_values`` [B, 3, S, S], ``resized_sizes`` / ``original_sizes`` Long [B, 2],
        ``gt_masks`` list of B tensors [K_b, H_b, W_b] (when examples carry masks; None for a
        text-only example), ``skipped``.
        When every example is None only ``{"skipped": n}`` is returned.
    """
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    kept = [e for e in examples if e is not None]
    skipped = len(examples) - len(kept)
    if not kept:
        return {"skipped": skipped}

    ids = [torch.as_tensor(e["input_ids"], dtype=torch.long).reshape(-1) for e in kept]
    att = [
        torch.as_tensor(e["attention_mask"], dtype=torch.long).reshape(-1)
        if e.get("attention_mask") is not None
        else torch.ones(len(i), dtype=torch.long)
        for e, i in zip(kept, ids)
    ]
    for b, (i, a) in enumerate(zip(ids, att)):
        if len(i) != len(a):
            raise InputError(f"example {b}: attention_mask length {len(a)} != input_ids length {len(i)}")
    length = max(len(i) for i in ids)
    left = padding_side == "left"
    batch: dict[str, Any] = {
        "input_ids": _pad(ids, pad_token_id, length, left),
        "attention_mask": _pad(att, 0, length, left),
    }

    has_labels = [e.get("labels") is not None for e in kept]
    if any(has_labels):
        if not all(has_labels):
            raise InputError("some examples have labels and some do not; cannot mix them in one batch")
        labels = [torch.as_tensor(e["labels"], dtype=torch.long).reshape(-1) for e in kept]
        for b, (i, lab) in enumerate(zip(ids, labels)):
            if len(i) != len(lab):
                raise InputError(f"example {b}: labels length {len(lab)} != input_ids length {len(i)}")
        batch["labels"] = _pad(labels, IGNORE_INDEX, length, left)

    pixels = [torch.as_tensor(e["pixel_values"]) for e in kept]
    if len({tuple(p.shape) for p in pixels}) != 1:
        raise InputError(f"pixel_values shapes differ within the batch: {sorted({tuple(p.shape) for p in pixels})}")
    batch["pixel_values"] = torch.stack(pixels)
    batch["resized_sizes"] = torch.stack([torch.as_tensor(e["resized_size"], dtype=torch.long) for e in kept])
    batch["original_sizes"] = torch.stack([torch.as_tensor(e["original_size"], dtype=torch.long) for e in kept])

    # text-only examples (``text_only``: trained without their masks) enter gt_masks as None
    has_masks = [e.get("masks") is not None or bool(e.get("text_only")) for e in kept]
    if any(has_masks):
        if not all(has_masks):
            raise InputError("some examples have masks and some do not; give an empty [0, H, W] mask tensor instead")
        batch["gt_masks"] = [None if e.get("text_only") else torch.as_tensor(e["masks"]) for e in kept]
    batch["skipped"] = skipped
    return batch
