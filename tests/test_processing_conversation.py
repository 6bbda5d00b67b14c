"""llava_v1 conversation: exact prompt strings, {seg} expansion, label masks, group-safe truncation."""

from __future__ import annotations

import pytest

from pixellm.build import tiny_tokenizer
from pixellm.errors import InputError
from pixellm.processing.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    build_prompt,
    count_seg,
    encode_conversation,
    expand_seg,
    find_codebook_groups,
)
from pixellm.processing.tokenizer import add_codebook_tokens

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
GROUP = "[SEG0][SEG1][SEG2][SEG3][SEG4][SEG5]"
QUESTION = "What can hold water?"
ANSWER = "The cup {seg} and the bowl {seg}."
N_IMG = 16


@pytest.fixture(scope="module")
def tok_ids():
    tok = tiny_tokenizer()
    ids = add_codebook_tokens(tok, 6)
    return tok, ids[:6]


def encode(tok_ids, answer=ANSWER, max_length=None, question=QUESTION, **kw):
    tok, cb = tok_ids
    return encode_conversation(tok, question, answer, codebook_ids=cb, num_image_tokens=N_IMG, max_length=max_length, **kw)


def test_exact_prompt_strings():
    assert build_prompt(QUESTION, expand_seg(ANSWER, 6)) == (
        f"{SYSTEM} USER: <im_start><image><im_end>\n{QUESTION} ASSISTANT: The cup {GROUP} and the bowl {GROUP}.</s>"
    )
    assert build_prompt(QUESTION) == f"{SYSTEM} USER: <im_start><image><im_end>\n{QUESTION} ASSISTANT:"
    assert build_prompt("And now?", None, history=[("Q1", "A1")]) == (
        f"{SYSTEM} USER: <im_start><image><im_end>\nQ1 ASSISTANT: A1</s>USER: And now? ASSISTANT:"
    )


def test_expand_and_count_seg():
    assert expand_seg("a {seg} b [SEG] c", 2) == "a [SEG0][SEG1] b [SEG0][SEG1] c"
    assert count_seg("a {seg} b [SEG] c [SEG0]") == 2
    assert expand_seg("no targets", 6) == "no targets"


def test_image_placeholder_in_text_is_refused():
    with pytest.raises(InputError, match="image placeholder"):
        build_prompt("look at <image> here")


def test_tokens_and_label_mask_for_two_targets(tok_ids):
    tok, cb = tok_ids
    enc = encode(tok_ids)
    ids, labels = enc.input_ids, enc.labels
    assert enc.num_targets == 2 and not enc.truncated and len(ids) == len(labels)
    assert ids[0] == tok.bos_token_id
    # The image: exactly N_IMG placeholders, contiguous, between <im_start> and <im_end>.
    first = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[first : first + N_IMG] == [IMAGE_TOKEN_INDEX] * N_IMG and ids.count(IMAGE_TOKEN_INDEX) == N_IMG
    assert tok.convert_ids_to_tokens([ids[first - 1], ids[first + N_IMG]]) == ["<im_start>", "<im_end>"]
    # Labels: -100 on a prefix that is exactly the prompt through "ASSISTANT:", then every token.
    n_masked = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert all(lab == IGNORE_INDEX for lab in labels[:n_masked])
    assert labels[n_masked:] == ids[n_masked:]
    prompt_ids = [i for i in ids[:n_masked] if i != IMAGE_TOKEN_INDEX]
    assert tok.decode(prompt_ids) == f"<s>{SYSTEM} USER: <im_start><im_end>\n{QUESTION} ASSISTANT:"
    assert tok.decode(labels[n_masked:]) == f" The cup {GROUP} and the bowl {GROUP}.</s>"
    assert labels[-1] == tok.eos_token_id  # </s> supervised
    supervised = tok(f" The cup {GROUP} and the bowl {GROUP}.</s>", add_special_tokens=False).input_ids
    assert labels[n_masked:] == supervised
    assert find_codebook_groups(labels, cb)[0] == [(s, s + 6) for s in (ids.index(cb[0]), len(ids) - 8)]  # group, ".", "</s>"


@pytest.mark.parametrize("answer", [
    "There is no purple circle in the image.",  # no " There" token: the space is a token of its own
    "Every shape is a circle.",
    "The red square {seg}.",
])
def test_every_token_after_the_generation_prompt_is_supervised(tok_ids, answer):
    """The masked prefix is exactly the generation prompt, so whatever generation must produce
    after "ASSISTANT:" (a lone space token included) is what training supervises."""
    tok, _ = tok_ids
    enc = encode(tok_ids, answer)
    prompt = encode(tok_ids, answer=None).input_ids
    n_masked = sum(lab == IGNORE_INDEX for lab in enc.labels)
    assert enc.input_ids[:n_masked] == prompt and n_masked == len(prompt)
    assert enc.labels[n_masked:] == enc.input_ids[n_masked:]
    assert tok.decode(enc.labels[n_masked:]).startswith(" " + answer.split()[0])


def test_seg_marker_alias_gives_same_encoding(tok_ids):
    assert encode(tok_ids, "The cup [SEG] and the bowl [SEG].") == encode(tok_ids)


def test_inference_prompt_is_prefix_of_training_sequence(tok_ids):
    infer = encode(tok_ids, answer=None)
    train = encode(tok_ids)
    assert infer.labels is None and infer.num_targets == 0
    assert train.input_ids[: len(infer.input_ids)] == infer.input_ids
    assert train.labels[len(infer.input_ids) - 1] == IGNORE_INDEX and train.labels[len(infer.input_ids)] != IGNORE_INDEX


def test_truncation_keeps_whole_groups(tok_ids):
    _, cb = tok_ids
    full = encode(tok_ids).input_ids
    (s1, e1), (s2, e2) = find_codebook_groups(full, cb)[0]
    for max_length in range(s2 + 1, e2):  # every cut inside the second group drops that group
        enc = encode(tok_ids, max_length=max_length)
        assert enc.truncated and len(enc.input_ids) == s2 == len(enc.labels)
        assert enc.num_targets == 1
        assert find_codebook_groups(enc.input_ids, cb) == ([(s1, e1)], [])
    enc = encode(tok_ids, max_length=e2)  # cut right after the second group keeps both
    assert enc.truncated and enc.num_targets == 2 and len(enc.input_ids) == e2
    assert encode(tok_ids, max_length=s1 + 2).num_targets == 0
    assert not encode(tok_ids, max_length=len(full)).truncated


def test_prompt_longer_than_max_length_raises(tok_ids):
    n_prompt = len(encode(tok_ids, answer=None).input_ids)
    with pytest.raises(InputError, match="max_length"):
        encode(tok_ids, max_length=n_prompt - 5)


def test_history_answers_keep_their_groups(tok_ids):
    _, cb = tok_ids
    enc = encode(tok_ids, answer="Yes {seg}.", history=[("Where is the cup?", "Here {seg}.")])
    complete, incomplete = find_codebook_groups(enc.input_ids, cb)
    assert len(complete) == 2 and not incomplete
    assert enc.num_targets == 1  # only the supervised (last) answer counts
    assert enc.labels[complete[0][0]] == IGNORE_INDEX and enc.labels[complete[1][0]] != IGNORE_INDEX


def test_supervised_history_trains_every_answer(tok_ids):
    """A packed conversation: each answer is supervised from after its "ASSISTANT:" through its
    "</s>", each question and the template stay masked, every group counts."""
    tok, cb = tok_ids
    history = [("Where is the cup?", "Here {seg}."), ("Is there a fork?", "No.")]
    enc = encode(tok_ids, answer="The bowl {seg}.", history=history, supervise_history=True)
    plain = encode(tok_ids, answer="The bowl {seg}.", history=history)
    assert enc.input_ids == plain.input_ids
    assert enc.num_targets == 2 and plain.num_targets == 1
    spans, start = [], None
    for i, lab in enumerate(enc.labels):
        if lab != IGNORE_INDEX and start is None:
            start = i
        if lab == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    spans.append((start, len(enc.labels)))
    assert [tok.decode(enc.input_ids[a:b]) for a, b in spans] == [f" Here {GROUP}.</s>", " No.</s>", f" The bowl {GROUP}.</s>"]
    for a, b in spans:
        assert enc.labels[a:b] == enc.input_ids[a:b]
    # the masked part before each answer is exactly that turn's generation prompt
    for t, (a, _) in enumerate(spans):
        turn_q = (history + [("What can hold water?", None)])[t][0]
        prompt = encode(tok_ids, answer=None, question=turn_q, history=history[:t]).input_ids
        assert enc.input_ids[:a] == prompt
    # a cut inside the last group drops it and keeps the history's
    s2 = find_codebook_groups(enc.input_ids, cb)[0][1][0]
    cut = encode(tok_ids, answer="The bowl {seg}.", history=history, supervise_history=True, max_length=s2 + 3)
    assert cut.truncated and cut.num_targets == 1


def test_find_codebook_groups_complete_and_incomplete():
    cb = [10, 11, 12]
    assert find_codebook_groups([1, 10, 11, 12, 2, 10, 11, 12, 10, 11, 12], cb) == ([(1, 4), (5, 8), (8, 11)], [])
    # a short group, a wrong order, and leftovers before a complete group
    assert find_codebook_groups([10, 11, 5, 12, 11, 10, 6, 11, 10, 11, 12], cb) == (
        [(8, 11)], [(0, 2), (3, 6), (7, 8)]
    )
    assert find_codebook_groups([], cb) == ([], [])


def test_tokenizer_merging_across_assistant_is_detected():
    """A tokenizer without whitespace pre-splitting may merge "ASSISTANT: T" into one token:
    the prompt prefix then disagrees with the whole sequence, and we refuse instead of guessing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(["ASSISTANT: The cup"] * 50, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cb = add_codebook_tokens(tok, 2)[:2]
    with pytest.raises(InputError, match="disagrees"):
        encode_conversation(tok, "q", "The cup", codebook_ids=cb, num_image_tokens=4)
