"""collate: padding sides, label/attention padding, masks as a list, skipped None samples."""

from __future__ import annotations

import pytest
import torch

from pixellm.errors import InputError
from pixellm.processing.collate import collate

PAD = 0


def example(n_tokens, k_masks, hw=(5, 7), with_labels=True):
    ex = {
        "input_ids": torch.arange(10, 10 + n_tokens),
        "attention_mask": torch.ones(n_tokens, dtype=torch.long),
        "pixel_values": torch.randn(3, 8, 8),
        "resized_size": torch.tensor([6, 8]),
        "original_size": torch.tensor(hw),
        "masks": torch.zeros(k_masks, *hw, dtype=torch.bool),
    }
    if with_labels:
        ex["labels"] = torch.cat([torch.full((2,), -100), torch.arange(100, 100 + n_tokens - 2)])
    return ex


def test_right_padding_shapes_and_values_with_a_none():
    batch = collate([example(5, 2), None, example(3, 0, hw=(4, 4))], pad_token_id=PAD)
    assert batch["skipped"] == 1
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (2, 5)
    assert batch["input_ids"][1].tolist() == [10, 11, 12, PAD, PAD]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
    assert batch["labels"][1].tolist() == [-100, -100, 100, -100, -100]
    assert batch["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["resized_sizes"].tolist() == [[6, 8], [6, 8]]
    assert batch["original_sizes"].tolist() == [[5, 7], [4, 4]]
    assert [tuple(m.shape) for m in batch["gt_masks"]] == [(2, 5, 7), (0, 4, 4)]


def test_left_padding():
    batch = collate([example(2, 0, with_labels=False), example(4, 0, with_labels=False)], PAD, padding_side="left")
    assert batch["input_ids"][0].tolist() == [PAD, PAD, 10, 11]
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1]
    assert "labels" not in batch


def test_attention_mask_defaults_to_ones_and_keeps_zeros():
    a, b = example(3, 0), example(3, 0)
    del a["attention_mask"]
    b["attention_mask"] = torch.tensor([1, 0, 1])
    batch = collate([a, b], PAD)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 1]]


def test_all_none_and_inconsistent_batches():
    assert collate([None, None], PAD) == {"skipped": 2}
    with pytest.raises(InputError, match="labels"):
        collate([example(3, 0), example(3, 0, with_labels=False)], PAD)
    no_masks = example(3, 0)
    no_masks["masks"] = None
    with pytest.raises(InputError, match="masks"):
        collate([example(3, 0), no_masks], PAD)
    bad = example(3, 0)
    bad["pixel_values"] = torch.zeros(3, 4, 4)
    with pytest.raises(InputError, match="pixel_values"):
        collate([example(3, 0), bad], PAD)
    with pytest.raises(InputError, match="padding_side"):
        collate([example(3, 0)], PAD, padding_side="middle")
