"""PixelLMProcessor: training/inference encodings, image-cell attention masks, decoding, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixellm.build import tiny_processor
from pixellm.errors import ConfigError, InputError
from pixellm.processing.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pixellm.processing.processing_pixellm import PixelLMProcessor

ANSWER = "The cup {seg} and the bowl {seg}."


@pytest.fixture(scope="module")
def proc():
    return tiny_processor()  # S=64, patch 8, LLM grid 4 -> 16 image tokens, 6 codebook tokens


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_tiny_numbers(proc):
    assert proc.num_image_tokens == 16 and proc.llm_image_grid == 4
    assert proc.image_processor.image_size == 64 and proc.image_processor.patch_size == 8
    assert proc.tokenizer.convert_ids_to_tokens(proc.codebook_token_ids) == [f"[SEG{i}]" for i in range(6)]
    assert proc.pad_token_id == proc.tokenizer.unk_token_id


def test_image_attention_mask_wide_and_tall(proc):
    # S=64, G=4: cell r covers y in [16r, 16r+16); valid iff 16r < h'.
    wide = proc.image_attention_mask((20, 64)).reshape(4, 4)  # rows 0, 1 (16 < 20)
    tall = proc.image_attention_mask((64, 16)).reshape(4, 4)  # col 0 only (16 < 16 is false)
    assert wide.tolist() == [[1] * 4, [1] * 4, [0] * 4, [0] * 4]
    assert tall.tolist() == [[1, 0, 0, 0]] * 4
    batch = proc.image_attention_mask(torch.tensor([[20, 64], [64, 16]]))
    assert batch.shape == (2, 16) and torch.equal(batch[0], wide.flatten())


def test_encode_example_training(proc):
    masks = np.zeros((2, 10, 32), bool)
    masks[0, :5], masks[1, 5:] = True, True
    ex = proc.encode_example(image(10, 32), "What can hold water?", ANSWER, masks=masks)
    ids, att, labels = ex["input_ids"], ex["attention_mask"], ex["labels"]
    assert ids.shape == att.shape == labels.shape and ids.dtype == torch.long
    assert ex["pixel_values"].shape == (3, 64, 64)
    assert ex["resized_size"].tolist() == [20, 64] and ex["original_size"].tolist() == [10, 32]
    assert ex["num_targets"] == 2 and torch.equal(ex["masks"], torch.from_numpy(masks))
    img_pos = ids == IMAGE_TOKEN_INDEX
    assert img_pos.sum() == 16 and torch.all(labels[img_pos] == IGNORE_INDEX)
    # wide image: the bottom two rows of LLM cells are padding -> attention 0; all text attends
    assert att[img_pos].tolist() == [1] * 8 + [0] * 8
    assert torch.all(att[~img_pos] == 1)


def test_seg_count_mismatch_is_a_clear_error(proc):
    with pytest.raises(InputError, match=r"2 \{seg\} markers but masks have shape \(3, 10, 32\)"):
        proc.encode_example(image(10, 32), "q", ANSWER, masks=np.zeros((3, 10, 32), bool))
    with pytest.raises(InputError, match="image is"):
        proc.encode_example(image(10, 32), "q", ANSWER, masks=np.zeros((2, 32, 10), bool))
    with pytest.raises(InputError, match="without an answer"):
        proc.encode_example(image(10, 32), "q", None, masks=np.zeros((0, 10, 32), bool))


def test_truncation_trims_masks(proc):
    full = proc.encode_example(image(8, 8), "q", ANSWER)
    cb0 = proc.codebook_token_ids[0]
    second_start = (full["input_ids"] == cb0).nonzero().flatten()[1].item()
    short = PixelLMProcessor(proc.tokenizer, proc.image_processor, num_image_tokens=16, llm_image_grid=4,
                             max_length=second_start + 2)
    masks = torch.rand(2, 8, 8) > 0.5
    ex = short.encode_example(image(8, 8), "q", ANSWER, masks=masks)
    assert ex["truncated"] and ex["num_targets"] == 1 and len(ex["input_ids"]) == second_start
    assert torch.equal(ex["masks"], masks[:1])


def test_call_inference_left_pads_without_labels(proc):
    batch = proc([image(10, 32), image(40, 8, 1)], ["Short?", "A much longer question about the picture?"])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "resized_sizes", "original_sizes"}
    ids, att = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == att.shape and ids.shape[0] == 2
    assert ids[0, 0] == proc.pad_token_id and att[0, 0] == 0  # left padding on the shorter prompt
    assert torch.all(att[:, -1] == 1)
    tail = proc.tokenizer.decode(ids[0, -3:])
    assert tail.endswith("ASSISTANT:")
    assert batch["resized_sizes"].tolist() == [[20, 64], [64, 13]]


def test_call_training_right_pads_with_labels(proc):
    batch = proc([image(10, 32), image(40, 8)], ["q", "another q"], ["It {seg}.", "Both {seg} and {seg}."])
    assert batch["labels"].shape == batch["input_ids"].shape
    pad_cols = batch["attention_mask"][0] == 0
    assert torch.all(batch["labels"][0, pad_cols] == IGNORE_INDEX)
    assert batch["attention_mask"][0, 0] == 1
    with pytest.raises(InputError, match="answers"):
        proc([image(4, 4)], ["q"], ["a", "b"])


def test_parse_answer_complete_and_incomplete_groups(proc):
    tok, cb = proc.tokenizer, proc.codebook_token_ids

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    group = "".join(f"[SEG{i}]" for i in range(6))
    full = ids(f" The cup {group} and the bowl {group}.</s>")
    parsed = proc.parse_answer(full)
    assert parsed.text == "The cup [SEG] and the bowl [SEG]."
    assert parsed.num_groups == 2 and parsed.incomplete == 0 and len(parsed.group_spans) == 2
    partial = ids(" The cup [SEG0][SEG1][SEG2] and the bowl") + cb + ids(" and [SEG3][SEG4]</s>")
    parsed = proc.parse_answer(torch.tensor(partial))
    assert parsed.text == "The cup  and the bowl[SEG] and"
    assert (parsed.num_groups, parsed.incomplete) == (1, 2)
    assert proc.parse_answer(ids(" nothing here")).text == "nothing here"


def test_save_load_round_trip_gives_identical_encodings(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name
    loaded = PixelLMProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == proc.to_dict()
    assert loaded.codebook_token_ids == proc.codebook_token_ids and len(loaded.tokenizer) == len(proc.tokenizer)
    a = proc.encode_example(image(12, 30), "Where is it?", ANSWER, masks=np.zeros((2, 12, 30), bool))
    b = loaded.encode_example(image(12, 30), "Where is it?", ANSWER, masks=np.zeros((2, 12, 30), bool))
    for key in ("input_ids", "attention_mask", "labels", "pixel_values", "resized_size", "original_size", "masks"):
        assert torch.equal(a[key], b[key]), key
    answer_ids = a["labels"][a["labels"] >= 0]
    assert loaded.parse_answer(answer_ids) == proc.parse_answer(answer_ids)


def test_instruction_setting_is_saved_and_defaults_to_the_released_convention(proc, tmp_path):
    import json

    assert proc.instruction is True
    proc.instruction = False
    proc.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["instruction"] is False
    assert PixelLMProcessor.from_pretrained(tmp_path).instruction is False
    # a processor saved before the setting existed: the released convention
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    del cfg["instruction"]
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    assert PixelLMProcessor.from_pretrained(tmp_path).instruction is True
    cfg["instruction"] = "no"
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="instruction"):
        PixelLMProcessor.from_pretrained(tmp_path)


def test_bad_configuration(proc):
    with pytest.raises(ConfigError, match="llm_image_grid"):
        PixelLMProcessor(proc.tokenizer, proc.image_processor, num_image_tokens=15, llm_image_grid=4)
    with pytest.raises(ConfigError, match="max_length"):
        PixelLMProcessor(proc.tokenizer, proc.image_processor, num_image_tokens=16, llm_image_grid=4, max_length=16)
