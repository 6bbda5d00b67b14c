"""Token ids flow one way: preset sizes -> tokenizer -> config -> model (``pixellm.build``).

For N codebook tokens per scale, L scales and a shared or per-scale codebook, one step builds the
processor and the model from a tiny preset; a few training steps, save, load and prediction then
give one mask per complete group of ``config.num_codebook_tokens`` tokens. No test passes ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixellm.build import build_pixellm
from pixellm.conventions import expand_seg
from pixellm.infer.generation import GenerationOptions
from pixellm.infer.predictor import Predictor
from pixellm.model.configuration_pixellm import TINY_VOCAB_SIZE
from pixellm.processing.collate import collate
from pixellm.testing import script_text

# Covering subset of N in 1..4 x L in 1..3 x shared: every N and every L appear with both values
# of shared_codebook (8 of the 24 combinations).
CASES = [
    (1, 1, False), (2, 2, False), (3, 3, False), (4, 2, False),
    (1, 3, True), (2, 1, True), (3, 2, True), (4, 3, True),
]
QUESTION = "Segment the red circle and the blue square."
ANSWER = "the red circle {seg} and the blue square {seg}."
SCRIPT, LOOP = " the chair [SEG] and this [SEG]", " and this [SEG]"


def small_preset_overrides(n: int, scales: int, shared: bool) -> dict:
    return dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2, patch_size=8, image_size=64,
                           projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=TINY_VOCAB_SIZE,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_select_layers=[-1, -2, -3][:scales], decoder_dim=32, decoder_heads=4, decoder_mlp_dim=64,
        pixel_detail_channels=8, num_tokens_per_scale=n, shared_codebook=shared,
    )


def synthetic_examples(processor, count: int = 2, seed: int = 0):
    """Random images, each with two rectangle masks named in the answer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        h, w = rng.integers(32, 64, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = np.zeros((2, h, w), dtype=bool)
        masks[0, : h // 2, : w // 2] = True
        masks[1, h // 3 :, w // 3 :] = True
        out.append((image, processor.encode_example(image, QUESTION, ANSWER, masks)))
    return out


@pytest.mark.parametrize("n, scales, shared", CASES)
def test_build_train_save_load_predict_one_mask_per_complete_group(n, scales, shared, tmp_path):
    model, processor = build_pixellm("tiny", max_length=128, seed=0, **small_preset_overrides(n, scales, shared))
    cfg = model.config
    group = n if shared else n * scales
    assert cfg.num_codebook_tokens == group == processor.num_codebook_tokens
    tok = processor.tokenizer
    # ids in the documented order, read from the tokenizer; the vocabulary holds them all
    names = [f"[SEG{i}]" for i in range(group)] + ["<im_start>", "<im_end>"]
    ids = tok.convert_tokens_to_ids(names)
    assert cfg.codebook_token_ids == ids[:group] == processor.codebook_token_ids
    assert [cfg.im_start_token_id, cfg.im_end_token_id] == ids[group:]
    assert cfg.text_config.vocab_size == len(tok) == TINY_VOCAB_SIZE + group + 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)

    # a few training steps on synthetic data
    examples = synthetic_examples(processor)
    batch = collate([e for _, e in examples], processor.pad_token_id)
    batch.pop("skipped")
    assert [m.shape[0] for m in batch["gt_masks"]] == [2, 2]
    model.configure_trainable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        out = model(**batch)
        assert torch.isfinite(out.loss)
        assert [tuple(m.shape[:1]) for m in out.pred_masks] == [(2,), (2,)]
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))

    # save, load
    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    predictor = Predictor.from_pretrained(tmp_path)
    loaded = predictor.model
    assert loaded.config.codebook_token_ids == cfg.codebook_token_ids
    assert loaded.config.num_codebook_tokens == group and loaded.config.shared_codebook == shared
    assert predictor.processor.codebook_token_ids == cfg.codebook_token_ids

    # teacher-forced prediction: one mask per {seg}, the same as before saving
    image = examples[0][0]
    forced = predictor.teacher_forced([image], [QUESTION], [ANSWER])[0]
    assert forced.masks.shape == (2, *image.shape[:2]) and forced.answer.count("[SEG]") == 2
    with torch.no_grad():
        again = Predictor(model, processor).teacher_forced([image], [QUESTION], [ANSWER])[0]
    np.testing.assert_array_equal(forced.mask_logits, again.mask_logits)

    # generated prediction: two complete groups, then one cut short (when a group has > 1 token)
    script_text(loaded, predictor.processor, SCRIPT, loop_from=LOOP)
    n_tokens = lambda text: len(tok(expand_seg(text, group), add_special_tokens=False).input_ids)  # noqa: E731
    partial = group - 1  # codebook tokens of the third group before the token limit
    limit = n_tokens(SCRIPT) + (n_tokens(LOOP) - 1 if partial else 0)
    result = predictor(image, "Where can I sit?", options=GenerationOptions(max_new_tokens=limit))
    assert result.answer.count("[SEG]") == result.num_masks == 2
    assert result.masks.shape == (2, *image.shape[:2])
    assert result.incomplete_groups == (1 if partial else 0)
    codebook = set(cfg.codebook_token_ids)
    assert sum(t in codebook for t in result.token_ids) == 2 * group + partial
