"""Tiny tokenizer: round trips, BOS, specials, codebook tokens, determinism, pinned vocabulary,
save/load."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from pixellm.build import tiny_tokenizer
from pixellm.errors import ConfigError
from pixellm.processing.tokenizer import (
    add_codebook_tokens,
    build_tiny_tokenizer,
    llava_template_text,
)

# The ``tiny`` preset's tokenizer (every saved tiny checkpoint holds it) must not change. Recorded
# from the code before the synthetic set's corpus came in from pixellm.build (it was imported by
# pixellm.processing.tokenizer then): sha256 of json.dumps of the vocabulary as [token, id] pairs in
# id order, and of the merges as [left, right] pairs in rank order.
TINY_VOCAB_DIGESTS = {
    "vocab": (1024, "e10ed02b831655bcb7a42de68c4366b49843e897d0a319381b6ed25c0a7a1481"),
    "merges": (765, "533f14832d8f26f4db8586cb97dcb3e7b0a78b16785590d107ac37a0f4439b1c"),
}


def vocab_digests(tokenizer) -> dict[str, tuple[int, str]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [list(m) if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    digest = lambda obj: hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()  # noqa: E731
    return {"vocab": (len(vocab), digest(vocab)), "merges": (len(merges), digest(merges))}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_the_tiny_presets_tokenizer_is_unchanged(tok):
    assert vocab_digests(tok) == TINY_VOCAB_DIGESTS


def test_extra_corpus_is_what_build_adds():
    from pixellm.data.synth import tokenizer_corpus

    assert vocab_digests(build_tiny_tokenizer(extra_corpus=tokenizer_corpus())) == TINY_VOCAB_DIGESTS
    assert vocab_digests(build_tiny_tokenizer()) != TINY_VOCAB_DIGESTS  # the synthetic corpus matters
    with pytest.raises(ConfigError, match="not both"):
        build_tiny_tokenizer(["a b"] * 3, extra_corpus=["c"])


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "é漢字✓ 🙂 naïve", "x" * 300, ""],
)
def test_any_text_round_trips(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids  # byte-level: nothing is unknown


def test_llama_like_specials_and_bos(tok):
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token_id == tok.unk_token_id
    ids = tok("the chair</s>").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id  # "</s>" in text is one special token, not split


def test_template_and_frequent_words_are_single_tokens(tok):
    for word in ["chat", "curious", "assistant", "polite", "questions", "USER", "ASSISTANT",
                 "segmentation", "mask", "triangle", "red", "left"]:
        pieces = tok.tokenize(" " + word)
        assert len(pieces) == 1, (word, pieces)
    assert len(tok.tokenize("Please")) == 1  # sentence-initial form too


def test_custom_corpus_and_vocab_size():
    tok = build_tiny_tokenizer(["zorblax quuxify " * 5] * 10, vocab_size=300)
    assert len(tok) <= 300
    assert tok.tokenize(" zorblax") == ["Ġzorblax"]
    with pytest.raises(ConfigError, match="vocab_size"):
        build_tiny_tokenizer(["a"], vocab_size=100)


def test_training_is_deterministic_across_processes(tok):
    code = (
        "import hashlib; from pixellm.build import tiny_tokenizer;"
        "print(hashlib.sha256(tiny_tokenizer().backend_tokenizer.to_str().encode()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    here = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    assert other == here


def test_add_codebook_tokens_order_idempotent_and_unsplit():
    tok = tiny_tokenizer()
    base = len(tok)
    ids = add_codebook_tokens(tok, 6)
    assert ids == list(range(base, base + 8))
    assert tok.convert_ids_to_tokens(ids) == [f"[SEG{i}]" for i in range(6)] + ["<im_start>", "<im_end>"]
    assert add_codebook_tokens(tok, 6) == ids and len(tok) == base + 8
    assert tok.convert_tokens_to_ids([f"[SEG{i}]" for i in range(6)]) == ids[:6]
    enc = tok("a[SEG0][SEG1]b <im_start>", add_special_tokens=False).input_ids
    assert ids[0] in enc and ids[1] in enc and ids[6] in enc


def test_save_load_round_trip(tmp_path, tok):
    from transformers import AutoTokenizer

    add_codebook_tokens(tok, 6)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = llava_template_text().replace("{seg}", "[SEG0][SEG1][SEG2][SEG3][SEG4][SEG5]")
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.pad_token_id == tok.pad_token_id
