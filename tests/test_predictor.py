"""Predictor: cached generation with masks, batching, teacher forcing, results and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixellm.data.masks import decode_rle
from pixellm.data.prompts import INSTRUCTION
from pixellm.errors import ConfigError, DataError, InputError
from pixellm.infer.generation import GenerationOptions
from pixellm.infer.predictor import Predictor
from pixellm.testing import (
    chain_transitions,
    random_pixellm,
    save_random_predictor,
    scripted_pixellm,
)

ANSWER, LOOP = " the chair [SEG] and this [SEG]", " and this [SEG]"


@pytest.fixture(scope="module")
def processor():
    from pixellm.build import tiny_processor

    return tiny_processor()


@pytest.fixture(scope="module")
def scripted(processor):
    """Greedy answer: "the chair [SEG] and this [SEG] and this [SEG] ..." until the token limit."""
    return Predictor(scripted_pixellm(processor, ANSWER, loop_from=LOOP), processor,
                     GenerationOptions(max_new_tokens=30))


@pytest.fixture(scope="module")
def gibberish(processor):
    return Predictor(random_pixellm(processor, seed=3), processor, GenerationOptions(max_new_tokens=10))


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 70, 3), (90, 30, 3), (64, 64, 3))]


def test_scripted_answer_has_one_mask_per_complete_group(scripted):
    img = _images()[0]
    r = scripted(img, "Where can I sit?")
    # 30 tokens: "the chair _ G" (9) + 3 x "and this _ G" (27) cut to 30 -> 3 complete groups
    assert r.answer.startswith("the chair [SEG] and this [SEG]")
    assert r.answer.count("[SEG]") == 3 == r.num_masks
    assert r.masks.shape == (3, 40, 70) and r.masks.dtype == bool
    assert r.mask_logits.shape == (3, 40, 70) and r.mask_logits.dtype == np.float32
    assert np.array_equal(r.masks, r.mask_logits > 0)
    assert r.incomplete_groups == 0 and len(r.token_ids) == 30
    assert r.question.endswith(INSTRUCTION)


def test_incomplete_group_is_reported_and_complete_ones_kept(scripted):
    # 25 tokens end inside the third group: two masks survive, one incomplete group is reported
    r = scripted(_images()[0], "Where can I sit?", options=GenerationOptions(max_new_tokens=25))
    assert r.num_masks == 2 == r.answer.count("[SEG]")
    assert r.incomplete_groups == 1


def test_generated_masks_equal_teacher_forced_forward(scripted, processor):
    """The hidden states collected during cached generation are the post-norm states of a
    teacher-forced forward: the masks must agree (also under left padding in a batch)."""
    imgs, qs = _images()[:2], ["Where can I sit?", "Which objects are next to the big red table today?"]
    results = scripted.batch(imgs, qs)
    model = scripted.model
    for img, q, r in zip(imgs, qs, results):
        ex = processor.encode_example(img, r.question)
        ids = torch.cat([ex["input_ids"], torch.tensor(r.token_ids)])[None]
        att = torch.cat([ex["attention_mask"], torch.ones(len(r.token_ids), dtype=torch.long)])[None]
        assert int((att == 0).sum()) > 0  # padded image cells really are masked in this test
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=att, pixel_values=ex["pixel_values"][None],
                        resized_sizes=ex["resized_size"][None], original_sizes=ex["original_size"][None])
        tf = out.pred_masks[0].numpy()
        assert tf.shape == r.mask_logits.shape and tf.shape[0] == 3
        np.testing.assert_allclose(r.mask_logits, tf, atol=1e-4)
        # and the same through the Predictor's teacher-forced path on the decoded answer text
        tf2 = scripted.teacher_forced([img], [q], [r.answer])[0]
        assert tf2.teacher_forced and tf2.answer == r.answer
        np.testing.assert_allclose(tf2.mask_logits, r.mask_logits, atol=1e-4)


def test_pre_norm_states_would_give_other_masks(scripted, processor):
    """Guard that the comparison above can fail: masks from the pre-norm states differ."""
    img = _images()[0]
    r = scripted(img, "Where can I sit?")
    ex = processor.encode_example(img, r.question)
    ids = torch.cat([ex["input_ids"], torch.tensor(r.token_ids)])[None]
    att = torch.cat([ex["attention_mask"], torch.ones(len(r.token_ids), dtype=torch.long)])[None]
    model = scripted.model
    captured = {}
    norm = model.language_model.get_decoder().norm
    hook = norm.register_forward_hook(lambda mod, args, out: captured.update(pre=args[0]))
    try:
        with torch.no_grad():
            feats = model.encode_images(ex["pixel_values"][None], ex["resized_size"][None], ex["original_size"][None])
            model.language_model.get_decoder()(
                inputs_embeds=model.embed_inputs(ids, feats.llm_tokens), attention_mask=att,
                position_ids=model.position_ids_from_mask(att),
            )
            pre_norm = captured["pre"][0]  # input of the final norm
            groups, _ = model.codebook_positions(ids)
            seg = model.seg_embeddings(pre_norm[groups[0] - 1])
            masks = model.predict_masks(feats, seg, torch.zeros(len(seg), dtype=torch.long))[0]
    finally:
        hook.remove()
    assert np.abs(masks.numpy() - r.mask_logits).max() > 1e-3


def test_batch_with_left_padding_equals_one_by_one(gibberish, scripted):
    imgs = _images(1)
    qs = ["Hi", "What is the big red circle next to the square on the left?", "Find the dog."]
    batched = gibberish.batch(imgs, qs)
    for img, q, b in zip(imgs, qs, batched):
        one = gibberish(img, q)
        assert b.token_ids == one.token_ids and b.answer == one.answer
    assert len({tuple(b.token_ids) for b in batched}) > 1  # inputs really differ
    for img, q, b in zip(imgs, qs, scripted.batch(imgs, qs)):
        one = scripted(img, q)
        assert b.answer == one.answer
        np.testing.assert_allclose(b.mask_logits, one.mask_logits, atol=1e-4)


def test_sampling_options(gibberish):
    img = _images()[0]
    opts = GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    a, b = gibberish(img, "Hi", options=opts), gibberish(img, "Hi", options=opts)
    assert a.token_ids == b.token_ids and len(a.token_ids) <= 8
    with pytest.raises(ConfigError, match="temperature"):
        gibberish(img, "Hi", options=GenerationOptions(do_sample=True, temperature=0))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        gibberish(img, "Hi", options=GenerationOptions(max_new_tokens=0))


def test_multi_turn_history(scripted):
    img = _images()[0]
    first = scripted(img, "Where can I sit?")
    second = scripted(img, "And now?", history=[(first.question, first.answer)])
    assert second.num_masks == 3 and second.masks.shape[1:] == (40, 70)


def test_instruction_option(processor, scripted):
    assert scripted.prepare_question("Where?") == f"Where? {INSTRUCTION}"
    assert scripted.prepare_question(f"Where? {INSTRUCTION}") == f"Where? {INSTRUCTION}"
    plain = Predictor(scripted.model, processor, add_instruction=False)
    assert plain.prepare_question(" Where? ") == "Where?"
    # a model trained without the suffix (its processor says so) gets questions without it
    processor.instruction = False
    try:
        assert Predictor(scripted.model, processor).prepare_question(" Where? ") == "Where?"
    finally:
        processor.instruction = True


def test_to_json_is_a_valid_prediction_line(scripted):
    from pixellm.eval.predictions import parse_prediction

    r = scripted(_images()[0], "Where can I sit?")
    line = r.to_json(image=0, question=0)
    for rle, mask in zip(line["masks"], r.masks):
        assert np.array_equal(decode_rle(rle), mask)
    rec = {"height": 40, "width": 70, "questions": ["q"], "answers": [[]]}
    pred = parse_prediction(line, [rec], "<test>", 1)
    assert pred.num_masks == 3 and len(line["mask_scores"]) == 3


def test_bad_inputs(scripted, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.png"):
        scripted(str(bad), "Where?")
    with pytest.raises(InputError, match="empty"):
        scripted(_images()[0], "   ")
    with pytest.raises(InputError, match="one image"):
        scripted.batch(_images()[:2], ["a"])
    with pytest.raises(ConfigError, match="successors"):
        chain_transitions([1, 2, 1, 3])


def test_from_pretrained_round_trip(tmp_path, processor):
    save_random_predictor(tmp_path / "m", answer=ANSWER, loop_from=LOOP)
    loaded = Predictor.from_pretrained(tmp_path / "m", options=GenerationOptions(max_new_tokens=12))
    r = loaded(_images()[2], "Where can I sit?")
    assert r.answer == "the chair [SEG] and this" and r.masks.shape == (1, 64, 64)
    with pytest.raises(FileNotFoundError):
        Predictor.from_pretrained(tmp_path / "missing")


def test_loading_a_checkpoint_prints_no_config_type_warning(tmp_path):
    import logging

    from transformers.utils import logging as hf_logging

    from pixellm import Predictor
    from pixellm.testing import save_random_predictor

    save_random_predictor(tmp_path, answer=" the chair [SEG]")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    try:
        Predictor.from_pretrained(tmp_path)
    finally:
        root.removeHandler(handler)
    assert not [m for m in messages if "to instantiate a model of type" in m]


def _previous_predictor_path(predictor, images, questions, max_new_tokens):
    """The Predictor's own greedy inference before ``PixelLMForCausalLM.generate`` existed
    (encode, embed, the LLM's generate with hidden states, groups, decode), kept as a reference."""
    model, proc = predictor.model, predictor.processor
    eos = proc.tokenizer.eos_token_id
    prompts = [predictor.prepare_question(q) for q in questions]
    batch = predictor._encode(images, prompts, None, None, "left")
    with torch.inference_mode():
        feats = model.encode_images(batch["pixel_values"], batch["resized_sizes"], batch["original_sizes"])
        out = model.language_model.generate(
            inputs_embeds=model.embed_inputs(batch["input_ids"], feats.llm_tokens),
            attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens, use_cache=True,
            output_hidden_states=True, return_dict_in_generate=True, eos_token_id=eos,
            pad_token_id=proc.pad_token_id, do_sample=False, temperature=None, top_p=None, top_k=None,
        )
        seqs = out.sequences
        steps = [out.hidden_states[0][-1][:, -1:]] + [h[-1][:, -1:] for h in out.hidden_states[1:]]
        step_hidden = torch.cat(steps, dim=1)[:, : seqs.shape[1]]
        texts, rows, index = [], [], []
        for b, row in enumerate(seqs.tolist()):
            ids = row[: row.index(eos)] if eos in row else row
            parsed = proc.parse_answer(ids)
            texts.append((parsed.text, ids))
            for start, end in parsed.group_spans:
                rows.append(step_hidden[b, start:end])
                index.append(b)
        cfg = model.config
        seg = (model.seg_embeddings(torch.stack(rows)) if rows
               else feats.decoder.new_zeros((0, cfg.num_scales, cfg.decoder_dim)))
        masks = model.predict_masks(feats, seg, torch.tensor(index, dtype=torch.long))
    return [(text, ids, m.float().numpy()) for (text, ids), m in zip(texts, masks)]


@pytest.mark.parametrize("name", ["scripted", "gibberish"])
def test_model_generate_gives_the_previous_text_and_masks(name, request):
    """Predictor -> model.generate is a refactoring: the same ids, text and (bitwise) masks as
    the Predictor's former own path, masks or none."""
    predictor = request.getfixturevalue(name)
    imgs, qs = _images(), ["Where can I sit?", "Which objects are next to the big red table today?", "Hi"]
    new = predictor.batch(imgs, qs)
    old = _previous_predictor_path(predictor, imgs, qs, predictor.options.max_new_tokens)
    for r, (text, ids, masks) in zip(new, old):
        assert r.answer == text and r.token_ids == ids
        assert r.mask_logits.shape == masks.shape and np.array_equal(r.mask_logits, masks)
    if name == "scripted":
        assert all(r.num_masks == 3 for r in new)


def test_processor_and_generate_the_hf_way(scripted, processor):
    """``model.generate(**processor(images=image, text=question, return_tensors="pt"))`` (the
    documented API) answers as the Predictor does, masks included."""
    img, q = _images()[0], "Where can I sit?"
    inputs = processor(images=img, text=scripted.prepare_question(q), return_tensors="pt")  # + instruction
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = scripted.model.generate(**inputs, max_new_tokens=scripted.options.max_new_tokens,
                                      do_sample=False, pad_token_id=processor.pad_token_id, eos_token_id=eos)
    r = scripted(img, q)
    assert out.sequences[0, : out.lengths[0]].tolist() == r.token_ids
    assert np.array_equal(out.pred_masks[0].numpy(), r.mask_logits)
    with pytest.raises(InputError, match="return_tensors"):
        processor(images=img, text=q, return_tensors="np")


def test_model_generate_outputs_and_generation_kwargs(scripted, processor):
    model = scripted.model
    batch = processor(_images()[:2], ["Where can I sit?", "Find the chairs please."])
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=processor.pad_token_id,
                  eos_token_id=processor.tokenizer.eos_token_id)
    with torch.no_grad():
        out = model.generate(**batch, **kwargs)
        feats = model.encode_images(batch["pixel_values"], batch["resized_sizes"], batch["original_sizes"])
        again = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], image_features=feats,
                               **kwargs)
    # "the chair [SEG]" (3 + 6 tokens) + "and this" -> one complete group in 12 tokens
    assert out.sequences.shape == (2, 12) and out.lengths == [12, 12]
    assert [len(m) for m in out.pred_masks] == [1, 1] and out.incomplete_groups == [0, 0]
    assert out.pred_masks[0].shape == (1, 40, 70) and out.pred_masks[1].shape == (1, 90, 30)
    assert out.group_spans == [[(3, 9)], [(3, 9)]]
    assert out.seg_embeddings.shape == (2, model.config.num_scales, model.config.decoder_dim)
    assert torch.equal(out.sequences, again.sequences)
    for a, b in zip(out.pred_masks, again.pred_masks):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="pixel_values or image_features"):
        model.generate(batch["input_ids"])
    with pytest.raises(InputError, match="beam search"):
        model.generate(**batch, num_beams=2, max_new_tokens=3)
    with pytest.raises(InputError, match="image_features has 2 images for 1"):
        model.generate(batch["input_ids"][:1], image_features=feats)


def test_set_image_runs_the_vision_tower_once_with_the_same_answers(scripted):
    img, other = _images()[0], _images()[1]
    questions = ["Where can I sit?", "Which objects are next to the big red table today?", "Find it."]
    direct = [scripted(img, q) for q in questions]
    calls = []
    hook = scripted.model.vision_tower.embeddings.patch_embedding.register_forward_hook(
        lambda m, i, o: calls.append(1))
    try:
        scripted.set_image(img)
        cached = [scripted.ask(q) for q in questions]
        assert len(calls) == 1 and scripted.has_image
        first = cached[0]
        turn = scripted.ask("And now?", history=[(first.question, first.answer)])
        assert turn.num_masks == 3 and len(calls) == 1
        scripted.set_image(other)  # a new image: one more pass, answers about it
        r = scripted.ask(questions[0])
        assert len(calls) == 2 and r.masks.shape[1:] == (90, 30)
        scripted.reset_image()
        with pytest.raises(InputError, match="no image set"):
            scripted.ask(questions[0])
    finally:
        hook.remove()
        scripted.reset_image()
    for a, b in zip(direct, cached):
        assert a.answer == b.answer and a.token_ids == b.token_ids and a.question == b.question
        assert np.array_equal(a.mask_logits, b.mask_logits) and np.array_equal(a.masks, b.masks)
    assert all(a.num_masks == 3 for a in direct)


# Run in a fresh interpreter: which modules are imported (and so whether "pixellm" is registered
# with AutoConfig) depends on what ran before. Prints the model modules imported and the
# config-type warnings, as JSON.
_LOAD_PROCESSOR = """
import json, logging, sys
from transformers.utils import logging as hf_logging
messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
hf_logging.get_logger("transformers").addHandler(Collect(level=logging.WARNING))
{load}
print(json.dumps({{
    "model_modules": sorted(m for m in sys.modules if m.startswith("pixellm.model")),
    "warnings": [m for m in messages if "to instantiate a model of type" in m],
}}))
"""


@pytest.mark.parametrize(
    "load, registers",
    [
        # the processing layer alone: no model module (docs/architecture.md, "Import graph")
        ("from pixellm.processing.processing_pixellm import PixelLMProcessor\n"
         "PixelLMProcessor.from_pretrained(sys.argv[1])", False),
        # the public name and pixellm.build register "pixellm" first: no warning
        ("from pixellm import PixelLMProcessor\nPixelLMProcessor.from_pretrained(sys.argv[1])", True),
        ("from pixellm.build import load_processor\nload_processor(sys.argv[1])", True),
    ],
    ids=["processing-alone", "public-name", "build.load_processor"],
)
def test_loading_a_processor_folder(tmp_path, load, registers):
    import json
    import subprocess
    import sys

    save_random_predictor(tmp_path)
    code = _LOAD_PROCESSOR.format(load=load)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if registers:
        assert found["model_modules"] == ["pixellm.model", "pixellm.model.configuration_pixellm"]
        assert found["warnings"] == []
    else:
        assert found["model_modules"] == []
