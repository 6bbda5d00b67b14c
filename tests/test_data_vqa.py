"""LLaVA-Instruct-style VQA JSON -> Samples without masks."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pixellm.data.vqa import vqa_samples


def test_vqa_turns_become_samples(tmp_path):
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "000001.jpg")
    data = [
        {"id": "1", "image": "000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the bus?"},
            {"from": "gpt", "value": "The bus is red."},
            {"from": "human", "value": "How many wheels?"},
            {"from": "gpt", "value": " Four. "},
        ]},
        {"id": "2", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "3", "image": "x.jpg", "conversations": [{"from": "gpt", "value": "wrong order"},
                                                        {"from": "human", "value": "?"}]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(data))
    samples, skipped = vqa_samples(path)
    assert skipped == {"no_image": 1, "malformed_record": 1}
    assert [(s.question, s.answer) for s in samples] == [
        ("What colour is the bus?", "The bus is red."),
        ("How many wheels?", "Four."),
    ]
    assert samples[0].image_path == str(tmp_path / "000001.jpg") and samples[0].source == "vqa"
    assert samples[1].num_seg == 0
    assert samples[0].load_masks().shape == (0, 7, 9)  # size from the image header
    first, _ = vqa_samples(path, turns="first")
    assert len(first) == 1 and first[0].meta == {"path": str(path), "record": 0, "question": 0, "id": "1"}


def test_a_packed_vqa_conversation_supervises_every_answer(tmp_path):
    """``pack_turns`` >= the turns of a record keeps the LLaVA conversation whole (as the released
    trainer does), each answer supervised, and two records on one image stay apart."""
    from pixellm.build import tiny_processor
    from pixellm.data.sample import pack_conversations
    from pixellm.processing.conversation import IGNORE_INDEX
    from pixellm.train.config import DataSource
    from pixellm.train.data import build_training_data

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    turns = [("What is it?", "A square."), ("Which colour?", "Red."), ("Is it big?", "No.")]
    conv = [{"from": f, "value": v} for q, a in turns for f, v in (("human", q), ("gpt", a))]
    data = [{"id": "1", "image": "a.jpg", "conversations": conv},
            {"id": "2", "image": "a.jpg", "conversations": conv[:2]}]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    samples, _ = vqa_samples(tmp_path / "llava.json")
    packed = pack_conversations(samples, 64)
    assert [len(p.history) for p in packed] == [2, 0]
    processor = tiny_processor()
    ds, _ = build_training_data([DataSource(name="v", kind="vqa", path=str(tmp_path / "llava.json"),
                                            pack_turns=64)], processor, seed=0)
    labels = ds[0]["labels"]
    text = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert text == " A square.</s> Red.</s> No.</s>"
