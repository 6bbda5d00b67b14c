"""Shared fixtures: small random PixelLM configs and batches (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

def small_config(**overrides):
    """A small random-model config with the tiny tokenizer's added tokens registered through the
    one step (``pixellm.build``): codebook ids and vocabulary come from the tokenizer."""
    from pixellm.build import build_processor
    from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE, PixelLMConfig

    kwargs = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2, patch_size=8, image_size=48,
                           projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=TINY_VOCAB_SIZE),
        vision_select_layers=[-1, -2], image_size=64, llm_image_grid=4, decoder_dim=32, decoder_heads=4,
        decoder_mlp_dim=64, vision_tower="",
    )
    kwargs.update(overrides)
    cfg = PixelLMConfig(**kwargs)
    build_processor(cfg)
    return cfg


def make_batch(cfg, targets=(2, 0), sizes=((80, 50), (45, 96)), resized=((64, 40), (30, 64)), seed=0):
    """A right-padded batch following the batch contract, one sample per entry of ``targets``."""
    g = torch.Generator().manual_seed(seed)
    seg = list(cfg.codebook_token_ids)
    seqs = []
    for k in targets:
        s = [1, 5, 6] + [cfg.image_token_index] * cfg.num_image_tokens + [7, 8]
        for _ in range(k):
            s += [9, 10] + seg
        seqs.append(s + [11, 2])
    t = max(map(len, seqs))
    b = len(seqs)
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.clone()
    labels[(ids == cfg.image_token_index) | (mask == 0)] = -100
    labels[:, :3] = -100
    gt = [(torch.rand(k, h, w, generator=g) > 0.5).float() for k, (h, w) in zip(targets, sizes)]
    return dict(
        input_ids=ids, attention_mask=mask, labels=labels,
        pixel_values=torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g),
        resized_sizes=torch.tensor(resized[:b]), original_sizes=torch.tensor(sizes[:b]), gt_masks=gt,
    )


@pytest.fixture
def small_cfg():
    return small_config()
