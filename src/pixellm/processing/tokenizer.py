"""Tokenizers: an offline-trained tiny tokenizer for the ``tiny`` preset, and the codebook tokens.

The tiny tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a small corpus
(the llava_v1 template, built-in words and an ``extra_corpus`` from above: the ``tiny`` preset's
tokenizer, :func:`pixellm.build.tiny_tokenizer`, passes the sentences the synthetic data set can
produce, ``pixellm.data.synth.tokenizer_corpus()``; this module imports no data module, see
``docs/architecture.md``, "Import graph"). Byte-level means every
string round-trips exactly, with no ``<unk>``; the specials mimic LLaMA (``<unk>`` = 0, ``<s>`` = 1,
``</s>`` = 2, ``<s>`` prepended, pad = ``<unk>`` as in LLaVA) so the same code serves the released
LLaMA tokenizer and the tiny one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pixellm.conventions import (  # noqa: F401  (IM_START, IM_END, codebook_token_strings: re-exported)
    IM_END,
    IM_START,
    added_token_strings,
    codebook_token_strings,
)
from pixellm.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

UNK, BOS, EOS = "<unk>", "<s>", "</s>"

# Words the tiny tokenizer should keep whole even without the synthetic corpus: instruction
# phrases, shapes, colours, sizes, positions, counting and a little general English for VQA.
_BUILTIN_WORDS = """
please segment respond with segmentation mask masks the a an and or of in on at to is are it its
this that these those there here what which who where how many much all each every both none no
yes not any some other same different than as by for from into image picture photo scene object
objects target targets shape shapes thing things one two three four five six seven eight nine ten
zero first second third last left right top bottom upper lower middle center centre above below
under over behind front next near far beside between inside outside around along across touching
overlapping overlaps overlap covers covered red green blue yellow orange purple pink brown black
white gray grey cyan magenta colour color colours colors coloured colored dark light bright pale
circle circles square squares triangle triangles rectangle rectangles ellipse ellipses star stars
diamond diamonds hexagon hexagons pentagon pentagons cross crosses ring rings disk disks line lines
big bigger biggest large larger largest small smaller smallest tiny huge long short tall wide narrow
thin thick round sharp size sizes area edge edges corner corners side sides part parts group
you can find see show shows point identify locate select mark highlight answer question describe
sit stand hold put place use could would should will may might need want like have has had do does
did be been being was were can't don't i me my we our they them their he she his her person people
man woman child dog cat car chair table cup bottle book bed sofa door window tree sky road grass
wall floor water building food plate bowl phone laptop bag ball box sign light lamp
""".split()

_SENTENCE_STARTS = """Please What Where Which Who How Can Could Is Are Segment Find Show Identify Locate The There
It They Yes No""".split()


def llava_template_text() -> str:
    """The llava_v1 template strings (system prompt, roles, separators) for the tokenizer corpus."""
    from pixellm.processing.conversation import SYSTEM_PROMPT, build_prompt

    return SYSTEM_PROMPT + " " + build_prompt("What is in the image?", "It is a {seg}.")


def default_corpus(extra_corpus: Iterable[str] = ()) -> list[str]:
    """Template text + ``extra_corpus`` + built-in words (the order fixes the trained vocabulary)."""
    corpus = [llava_template_text()] * 20  # repeated so every template word becomes one token
    corpus.extend(str(s) for s in extra_corpus)
    corpus.extend(" ".join(_BUILTIN_WORDS) for _ in range(3))
    # Sentence-initial forms (no leading space): the common question/answer openers weigh more.
    corpus.extend(w for w in _SENTENCE_STARTS for _ in range(3))
    corpus.extend(w.capitalize() for w in _BUILTIN_WORDS)
    return corpus


def build_tiny_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 1024, *, extra_corpus: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE tokenizer offline and wrap it for ``transformers``.

    The ``tiny`` preset's tokenizer (the one every tiny checkpoint holds) is
    :func:`pixellm.build.tiny_tokenizer`: this function with the synthetic set's sentences as
    ``extra_corpus``.

    Args:
        corpus: training strings; ``None`` = :func:`default_corpus` of ``extra_corpus``. Frequent
            words become single tokens (with their leading space, GPT-2 style).
        vocab_size: total size including the 256 byte symbols and the 3 specials.
        extra_corpus: strings added to the default corpus (not with ``corpus``).
    Returns:
        a fast tokenizer with ``bos_token_id`` 1 prepended to every encoding, ``pad = <unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 3:
        raise ConfigError(f"vocab_size={vocab_size} is below the byte alphabet + specials ({len(alphabet) + 3})")
    extra = [str(s) for s in extra_corpus]
    if corpus is not None and extra:
        raise ConfigError("pass corpus (the whole training text) or extra_corpus (added to the default), not both")
    texts = default_corpus(extra) if corpus is None else [str(s) for s in corpus]
    tok = Tokenizer(models.BPE())
    # No prefix space: "ASSISTANT:" tokenises the same alone and inside "ASSISTANT: answer", so the
    # prompt's tokens are an exact prefix of the full conversation's (label masking relies on it).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=UNK,  # LLaVA pads with <unk>
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
        padding_side="right",
    )


def add_codebook_tokens(tokenizer: PreTrainedTokenizerBase, num_tokens: int) -> list[int]:
    """Add ``[SEG0]..[SEG{n-1}]``, ``<im_start>``, ``<im_end>`` (in this order) as special tokens.

    Tokens already present (a released tokenizer) are kept with their ids, so this is idempotent.
    Returns the ids of all ``num_tokens + 2`` tokens, looked up with ``convert_tokens_to_ids``
    (the authors' ``tokenizer(tok).input_ids[0]`` trick breaks on tokenizers that add a BOS).
    """
    from tokenizers import AddedToken

    if num_tokens < 1:
        raise ConfigError(f"num_tokens must be >= 1, got {num_tokens}")
    names = added_token_strings(num_tokens)
    vocab = tokenizer.get_vocab()
    new = [AddedToken(n, special=True, normalized=False) for n in names if n not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ConfigError(f"tokenizer did not accept the codebook tokens {names}")
    return ids
