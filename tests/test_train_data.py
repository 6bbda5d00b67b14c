"""The trainer's data glue: configured sources -> one SegmentationDataset (read skips kept), and
training batches that keep their size while reporting the replaced bad samples."""

from __future__ import annotations

import json

import pytest
import torch

from pixellm.errors import ConfigError
from pixellm.train.config import DataSource
from pixellm.train.data import build_training_data, collate_train


def test_bad_samples_are_replaced_and_reported_in_batches(tmp_path):
    from pixellm.build import tiny_processor
    from pixellm.data.synth import write_synth

    write_synth(tmp_path, {"train": 6}, seed=0)
    records = json.loads((tmp_path / "train.json").read_text())
    records[0]["file_name"] = "images/train/missing.png"  # both questions of image 0 are bad
    records.append({"height": 4, "width": 4})  # malformed: counted while reading
    (tmp_path / "train.json").write_text(json.dumps(records))
    processor = tiny_processor()
    sources = [DataSource(name="synth", kind="synth", path=str(tmp_path / "train.json"), rate=3.0)]
    ds, rates = build_training_data(sources, processor, seed=0)
    assert rates == [3.0] and ds.names == ["synth"] and ds.read_skips == {"malformed_record": 1}
    first = ds[0]
    assert [s.reason for s in first["skips"]] == ["missing_image"] * 2
    assert "missing.png" in first["skips"][0].detail
    assert "record 0" in first["skips"][0].where
    assert first["masks"].shape[0] == first["num_targets"]
    batch = collate_train([first, ds[3]], pad_token_id=0)
    assert len(batch["skips"]) == 2 and batch["input_ids"].shape[0] == 2 and len(batch["gt_masks"]) == 2
    assert "num_targets" not in batch and "skipped" not in batch
    with pytest.raises(ConfigError, match="no training data set"):
        build_training_data([], processor, seed=0)


def test_sample_lengths_are_the_encoded_text_lengths(tmp_path):
    """Length grouping sorts by ``sample_lengths``: the encoded length less the fixed part
    (template and image tokens), so it orders samples as their real lengths do."""
    from pixellm.build import tiny_processor
    from pixellm.data.synth import write_synth
    from pixellm.train.data import sample_lengths

    write_synth(tmp_path, {"train": 40}, seed=0)
    processor = tiny_processor()
    sources = [DataSource(name="synth", kind="synth", path=str(tmp_path / "train.json"), rate=1.0)]
    ds, _ = build_training_data(sources, processor, seed=0)
    lengths = sample_lengths(ds, processor)
    encoded = [int(ds[i]["attention_mask"].shape[0]) for i in range(len(ds))]
    fixed = {e - n for e, n in zip(encoded, lengths)}
    assert len(lengths) == len(ds) == 40 and max(fixed) - min(fixed) <= 1, fixed


def test_packed_conversations_train_every_question_of_an_image(tmp_path):
    """``pack_turns: 2``: the two questions of each synthetic image become one conversation whose
    masks are both answers' targets in order; a model step takes it (one mask per group)."""
    import random

    import torch

    from pixellm.build import build_pixellm
    from pixellm.data.muse import muse_samples
    from pixellm.data.synth import write_synth
    from pixellm.processing.conversation import IGNORE_INDEX

    write_synth(tmp_path, {"train": 12}, seed=3)  # 6 images, 2 questions each
    model, processor = build_pixellm("tiny", max_length=320)
    path = str(tmp_path / "train.json")
    singles, _ = muse_samples(path, rng=random.Random(0))  # the paraphrases build_training_data draws
    ds, _ = build_training_data([DataSource(name="s", kind="synth", path=path, pack_turns=2)], processor, seed=0)
    assert len(ds) == 6 and [s.image_path for s in ds.sources[0]] == [s.image_path for s in singles[::2]]
    for i, packed in enumerate(ds.sources[0]):
        first, second = singles[2 * i], singles[2 * i + 1]
        assert packed.history == ((first.question, first.answer),)
        assert (packed.question, packed.answer) == (second.question, second.answer)
        assert packed.num_seg == first.num_seg + second.num_seg
        masks = packed.load_masks()
        assert (masks == torch.cat([torch.as_tensor(first.load_masks()), torch.as_tensor(second.load_masks())]).numpy()).all()
        ex = ds[i]
        assert ex["num_targets"] == packed.num_seg == ex["masks"].shape[0]
        supervised = ex["labels"][ex["labels"] != IGNORE_INDEX]
        text = processor.tokenizer.decode(supervised)
        # both answers are supervised: the first answer's words are in the labels
        assert first.answer.replace("{seg}", "").split()[1] in text and text.count("</s>") == 2
    batch = collate_train([ds[i] for i in range(4)], processor.pad_token_id)
    batch.pop("skips")
    out = model(**batch, return_logits=False)
    assert torch.isfinite(out.loss) and len(batch["gt_masks"]) == 4


def test_packing_keeps_records_apart_and_order(tmp_path):
    from pixellm.data.sample import Sample, no_masks, pack_conversations

    def s(record, q):
        return Sample("img.png", f"q{record}{q}", "a.", no_masks(2, 2), "src", {"path": "f", "record": record})

    samples = [s(0, 0), s(0, 1), s(0, 2), s(1, 0), s(2, 0), s(2, 1)]  # same image, three records
    packed = pack_conversations(samples, 2)
    assert [(p.meta["record"], len(p.history), p.question) for p in packed] == [
        (0, 1, "q01"), (0, 0, "q02"), (1, 0, "q10"), (2, 1, "q21")]
    assert pack_conversations(samples, 1) is samples
    assert [len(p.history) for p in pack_conversations(samples, 3)] == [2, 0, 1]
    with pytest.raises(ConfigError, match=r"data\[0\].pack_turns"):
        from pixellm.train.config import TrainConfig

        TrainConfig(data=[DataSource(path="x.json", pack_turns=0)]).validate()


def test_text_only_source_trains_answers_without_reading_or_decoding_masks(tmp_path):
    """``DataSource.masks: false``: the answers (codebook tokens included) are supervised as text,
    the masks are never read (a missing mask file does not matter), and the model decodes no
    target for those samples: their masks add nothing to the mask loss."""
    import torch

    from pixellm.build import build_pixellm
    from pixellm.data.synth import write_synth
    from pixellm.processing.conversation import IGNORE_INDEX

    write_synth(tmp_path, {"train": 12}, seed=1)
    records = json.loads((tmp_path / "train.json").read_text())
    for r in records:  # masks that cannot be read: a text-only source never reads them
        for a in r["ann_list"]:
            a["segmentation"] = {"size": [1, 1], "counts": "bad"}
    (tmp_path / "text.json").write_text(json.dumps(records))
    model, processor = build_pixellm("tiny", max_length=320)
    path, text = str(tmp_path / "train.json"), str(tmp_path / "text.json")
    ds, _ = build_training_data([DataSource(name="s", kind="synth", path=path),
                                 DataSource(name="t", kind="synth", path=text, masks=False)], processor, seed=0)
    n = len(ds.sources[0])
    with_targets = [i for i in range(n) if ds.sources[0][i].num_seg > 0][:2]
    pairs = [(i, n + i) for i in with_targets]  # the same answer, with and without masks
    for full, plain in pairs:
        a, b = ds[full], ds[plain]
        assert not b["skips"] and b.get("text_only") and "text_only" not in a
        # the same answer supervised (the question's paraphrase may differ)
        assert torch.equal(a["labels"][a["labels"] != IGNORE_INDEX], b["labels"][b["labels"] != IGNORE_INDEX])
        assert b["masks"] is None and a["masks"].shape[0] == a["num_targets"] > 0
        assert processor.tokenizer.convert_tokens_to_ids("[SEG0]") in b["labels"][b["labels"] != IGNORE_INDEX]
    i, j = pairs[0]
    batch = collate_train([ds[i], ds[j]], processor.pad_token_id)
    batch.pop("skips")
    assert batch["gt_masks"][1] is None and batch["gt_masks"][0].shape[0] > 0
    torch.manual_seed(0)
    model.eval()
    out = model(**batch, return_logits=False)
    assert out.num_targets == [ds[i]["num_targets"], 0] and out.pred_masks[1].shape[0] == 0
    # the mask loss is sample i's alone; the text loss covers both samples
    alone = collate_train([ds[i]], processor.pad_token_id)
    alone.pop("skips")
    one = model(**alone, return_logits=False)
    assert torch.allclose(out.mask_loss, one.mask_loss, atol=1e-5)
    assert not torch.allclose(out.ce_loss, one.ce_loss)
    out.loss.backward()
    assert model.mask_decoder.level_embed.weight.grad is not None


def test_questions_without_the_instruction_suffix(tmp_path):
    """A processor with ``instruction`` off (the demo's tiny model): questions as written, no
    suffix drawn."""
    from pixellm.build import tiny_processor
    from pixellm.data.prompts import INSTRUCTIONS
    from pixellm.data.synth import write_synth

    write_synth(tmp_path, {"train": 20}, seed=0)
    sources = [DataSource(name="s", kind="synth", path=str(tmp_path / "train.json"))]
    records = json.loads((tmp_path / "train.json").read_text())
    asked = [q for r in records for q in r["questions"]]
    with_suffix, _ = build_training_data(sources, tiny_processor(), seed=0)
    bare = tiny_processor()
    bare.instruction = False
    without, _ = build_training_data(sources, bare, seed=0)
    plain = [s.question for group in without.sources for s in group]
    suffixed = [s.question for group in with_suffix.sources for s in group]
    assert plain == [q.strip() for q in asked]
    assert all(any(s == f"{q.strip()} {i}" for i in INSTRUCTIONS) for s, q in zip(suffixed, asked))
    # fewer tokens per question, the same answer labels
    a, b = with_suffix[0], without[0]
    assert a["input_ids"].shape[0] > b["input_ids"].shape[0]
    assert torch.equal(a["labels"][a["labels"] >= 0], b["labels"][b["labels"] >= 0])
