"""Token and text conventions shared by processing, model, inference and evaluation.

One home for the constants and rules that every stage must agree on (see docs/architecture.md,
"Token and sequence conventions"):

- ``IMAGE_TOKEN_INDEX`` (-200, the released constant): the id that stands for one image token in
  ``input_ids``; never a vocabulary id.
- ``IGNORE_INDEX`` (-100): labels that are not supervised.
- ``SEG_MARKER`` (``"[SEG]"``): one marker per codebook group in decoded answers; ``{seg}`` in
  training answers expands to one group ``[SEG0]..[SEG{n-1}]``.
- ``added_token_strings``: the tokens added to a tokenizer, in order (codebook, ``<im_start>``,
  ``<im_end>``).
- ``find_codebook_groups``: where the complete groups (one target each) are in a token sequence.
- ``grid_valid_mask``: which cells of a grid over the padded image cover real pixels.
- ``target_phrases``: the words that introduce each ``[SEG]`` marker (overlays, judges).

Only the standard library is imported at module level; ``grid_valid_mask`` imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# llava_v1's system text (the released template); a processor may use another, or none
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_TOKEN_INDEX = -200  # released constant; never a vocabulary id
IGNORE_INDEX = -100
SEG_MARKER = "[SEG]"  # one marker per group in decoded answers
IM_START, IM_END = "<im_start>", "<im_end>"  # added after the codebook tokens (released layout)
_SEG_RE = re.compile(r"\{seg\}|\[SEG\]")


def codebook_token_strings(num_tokens: int) -> list[str]:
    """``["[SEG0]", ..., "[SEG{n-1}]"]``: the tokens of one codebook group, in order."""
    return [f"[SEG{i}]" for i in range(num_tokens)]


def added_token_strings(num_codebook_tokens: int) -> list[str]:
    """Every token PixelLM adds to a tokenizer, in the order they are added (so, on a tokenizer
    without them, in the order of their ids): ``[SEG0]..[SEG{n-1}]``, ``<im_start>``, ``<im_end>``."""
    return [*codebook_token_strings(num_codebook_tokens), IM_START, IM_END]


def count_seg(answer: str) -> int:
    """Number of ``{seg}`` / ``[SEG]`` markers in an answer."""
    return len(_SEG_RE.findall(answer))


def expand_seg(answer: str, n_tokens: int) -> str:
    """Replace each ``{seg}`` / ``[SEG]`` by ``[SEG0][SEG1]..[SEG{n-1}]`` (one group = one target)."""
    return _SEG_RE.sub("".join(codebook_token_strings(n_tokens)), answer)


def find_codebook_groups(
    ids: Sequence[int], codebook_ids: Sequence[int]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Locate codebook groups in a token sequence.

    A complete group is ``codebook_ids`` in order, contiguous. Any other run of codebook tokens
    (wrong order, cut short) is an incomplete fragment; a fragment ends where a non-codebook
    token or a complete group begins.

    Returns:
        (complete, incomplete): lists of ``(start, end)`` half-open token spans.
    """
    n = len(codebook_ids)
    cb = list(codebook_ids)
    members = set(cb)
    seq = list(ids)
    complete: list[tuple[int, int]] = []
    incomplete: list[tuple[int, int]] = []
    i = 0
    while i < len(seq):
        if seq[i] not in members:
            i += 1
        elif seq[i : i + n] == cb:
            complete.append((i, i + n))
            i += n
        else:
            j = i + 1
            while j < len(seq) and seq[j] in members and seq[j : j + n] != cb:
                j += 1
            incomplete.append((i, j))
            i = j
    return complete, incomplete


def grid_valid_mask(resized_sizes: torch.Tensor, image_size: int, grid: int) -> torch.Tensor:
    """Which cells of a ``grid x grid`` partition of the padded ``S x S`` input cover real pixels.

    Cell (r, c) is valid iff ``r*S/G < h'`` and ``c*S/G < w'`` (computed as ``r*S < h'*G`` in
    integers). With ``G = S / patch`` this is CLIP's patch mask; with the LLM grid, the image-token mask.

    Args:
        resized_sizes: Long ``[B, 2]`` (h', w') or ``[2]``.
    Returns:
        Bool ``[B, G, G]`` (or ``[G, G]`` for a single size).
    """
    import torch

    sizes = torch.as_tensor(resized_sizes, dtype=torch.long)
    single = sizes.ndim == 1
    sizes = sizes.reshape(-1, 2)
    starts = torch.arange(grid, dtype=torch.long, device=sizes.device) * image_size  # r*S vs h'*G
    rows = starts[None, :] < (sizes[:, 0:1] * grid)  # [B, G]
    cols = starts[None, :] < (sizes[:, 1:2] * grid)  # [B, G]
    valid = rows[:, :, None] & cols[:, None, :]
    return valid[0] if single else valid


_CLAUSE_END = re.compile(r"[.,;:!?()\n]")
_DETERMINERS = frozenset(
    "the a an this that these those its his her their my your our some each every".split()
)
_TRAILING_VERBS = frozenset("is are was were be being been".split())
# Words that name nothing on their own: a phrase made only of these is "" ("and it [SEG]").
_FUNCTION_WORDS = frozenset(
    "a an the is are and or on in at to of by with it its they this that these those there here be "
    "can you use sit for".split()
)
_MAX_PHRASE_WORDS = 6


def target_phrases(answer: str) -> list[str]:
    """The words that introduce each ``[SEG]`` marker: "on the large bed [SEG]" -> "large bed".

    The one rule for naming targets (overlay legends, coloured answers, the embedding judge).
    Heuristic (English): take the clause before the marker (back to the previous marker,
    punctuation or a parenthesis), drop a trailing copula ("the cat is [SEG]"), keep the words
    after the last determiner, at most 6 words. A marker with no words before it, or only
    function words ("and this [SEG]", "it [SEG]"), gives "".
    """
    phrases = []
    for before in answer.split(SEG_MARKER)[:-1]:
        clause = _CLAUSE_END.split(before)[-1]
        words = re.findall(r"[\w'-]+", clause)
        while words and words[-1].lower() in _TRAILING_VERBS:
            words.pop()
        cut = max((i for i, w in enumerate(words) if w.lower() in _DETERMINERS), default=-1)
        tail = words[cut + 1 :] if cut + 1 < len(words) else words
        if all(w.lower() in _FUNCTION_WORDS for w in tail):
            tail = []
        phrases.append(" ".join(tail[-_MAX_PHRASE_WORDS:]))
    return phrases
