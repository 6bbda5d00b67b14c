"""The llava_v1 conversation: prompt text, ``{seg}`` expansion, tokenisation with the image
expanded into placeholder ids, label masking and group-safe truncation.

Sequence layout of one training sample (``I`` = ``image_token_index`` repeated
``num_image_tokens`` times, ``G`` = one codebook group ``[SEG0]..[SEG{n-1}]``)::

    <s> SYSTEM USER: <im_start> I..I <im_end> \\n question ASSISTANT: answer ... G ... </s>
    |------------------------- labels -100 ---------------------------|-- supervised --|
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pixellm.conventions import (  # noqa: F401  (re-exported: the old import path)
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    SEG_MARKER,
    SYSTEM_PROMPT,
    count_seg,
    expand_seg,
    find_codebook_groups,
)
from pixellm.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("USER", "ASSISTANT")
SEP, SEP2 = " ", "</s>"  # llava_v1: after a user turn / after an assistant turn
IMAGE_PLACEHOLDER = "<image>"
IMAGE_BLOCK = "<im_start><image><im_end>"
def build_prompt(
    question: str,
    answer: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    system_prompt: str = SYSTEM_PROMPT,
) -> str:
    """llava_v1 prompt; the image block goes before the first question.

    ``system_prompt`` is llava_v1's (the released model's) by default; an empty one drops the
    system text and its separator (the tiny preset: 27 of its ~125 tokens were this text).

    With ``answer=None`` the prompt ends with ``"ASSISTANT:"`` (no space): the model then generates
    ``" word"`` tokens exactly as it saw them after ``"ASSISTANT:"`` in training.
    ``history`` = earlier (question, answer) turns, for multi-turn chat.
    """
    for text in (question, answer or "", *(t for turn in history for t in turn)):
        if IMAGE_PLACEHOLDER in text:
            raise InputError(f"text must not contain the image placeholder {IMAGE_PLACEHOLDER!r}: {text[:60]!r}")
    turns = [*history, (question, answer)]
    out = system_prompt + SEP if system_prompt else ""
    for i, (q, a) in enumerate(turns):
        q = f"{IMAGE_BLOCK}\n{q}" if i == 0 else q
        out += f"{ROLES[0]}: {q}{SEP}"
        out += f"{ROLES[1]}: {a}{SEP2}" if a is not None else f"{ROLES[1]}:"
    return out


def tokenize_with_image(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    num_image_tokens: int,
    image_token_index: int = IMAGE_TOKEN_INDEX,
) -> list[int]:
    """Tokenise ``prompt``, replacing each ``<image>`` by ``num_image_tokens`` x ``image_token_index``.

    The prompt is split at ``<image>``, which sits between the special tokens ``<im_start>`` and
    ``<im_end>``, so chunk-wise tokenisation equals whole-string tokenisation. Only the first chunk
    gets the tokenizer's specials (the BOS).
    """
    ids: list[int] = []
    for i, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.extend([image_token_index] * num_image_tokens)
        ids.extend(tokenizer(chunk, add_special_tokens=(i == 0)).input_ids)
    return ids


def _token_prefix_length(prefix: list[int], full: list[int], what: str) -> int:
    """``len(prefix)`` when ``prefix`` is a token prefix of ``full``; otherwise an InputError naming
    the first token that differs."""
    if full[: len(prefix)] != prefix:
        at = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), min(len(prefix), len(full)))
        raise InputError(
            f"tokenising {what} alone disagrees with the full conversation at token {at}; "
            "the tokenizer merges 'ASSISTANT:' with the answer"
        )
    return len(prefix)


def _supervise_turns(
    tokenizer: PreTrainedTokenizerBase,
    history: Sequence[tuple[str, str]],
    full: list[int],
    labels: list[int],
    system_prompt: str,
    num_image_tokens: int,
    image_token_index: int,
) -> int:
    """Unmask each earlier answer in ``labels`` (in place); returns the first supervised index."""

    def ids(text: str) -> list[int]:
        return tokenize_with_image(tokenizer, text, num_image_tokens, image_token_index)

    starts = []
    for t, (q, a) in enumerate(history):
        start = _token_prefix_length(ids(build_prompt(q, None, history[:t], system_prompt)), full,
                                     f"the prompt of turn {t + 1}")
        end = _token_prefix_length(ids(build_prompt(q, a, history[:t], system_prompt)), full,
                                   f"the conversation through answer {t + 1}")
        labels[start:end] = full[start:end]
        starts.append(start)
    return starts[0]


@dataclass
class EncodedConversation:
    """Token ids of one sample. ``labels`` is None without an answer.

    ``num_targets`` = complete codebook groups kept in the supervised answer (after truncation);
    the caller keeps the first ``num_targets`` ground-truth masks.
    """

    input_ids: list[int]
    labels: list[int] | None
    num_targets: int
    truncated: bool = False


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str | None,
    *,
    codebook_ids: Sequence[int],
    num_image_tokens: int,
    max_length: int | None = None,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    history: Sequence[tuple[str, str]] = (),
    system_prompt: str = SYSTEM_PROMPT,
    supervise_history: bool = False,
) -> EncodedConversation:
    """Build, tokenise, label-mask and truncate one conversation.

    ``answer`` may contain ``{seg}`` / ``[SEG]`` markers (expanded to ``len(codebook_ids)`` tokens).
    Labels are -100 on exactly the tokens of the generation prompt (which ends ``"ASSISTANT:"``)
    and supervise every token after it, including the space before the answer. The space matters:
    where the vocabulary has no space-prefixed form of the answer's first word (the tiny tokenizer
    has ``"There"`` but no ``" There"``), it is a token of its own; masking it, as LLaVA's
    ``"ASSISTANT: "`` prefix does, leaves a token that generation must produce but training never
    taught, and such answers are never generated. Truncation to ``max_length`` never cuts the
    prompt or the image (InputError instead) and drops a codebook group that the cut would split.

    ``supervise_history`` (training on a whole conversation, as LLaVA trains its multi-turn
    data): every answer of ``history`` is supervised too, each from after its ``"ASSISTANT:"``
    through its ``"</s>"``, and ``num_targets`` counts the groups of every answer, in order.
    """
    n_cb = len(codebook_ids)
    history = [(q, expand_seg(a, n_cb)) for q, a in history]  # earlier answers keep their groups
    # the generation prompt ("... ASSISTANT:"): the whole encoding at inference, the masked prefix in training
    prefix = tokenize_with_image(tokenizer, build_prompt(question, None, history, system_prompt), num_image_tokens, image_token_index)
    if answer is None:
        return EncodedConversation(prefix, None, 0)

    expanded = expand_seg(answer, n_cb)
    full = tokenize_with_image(tokenizer, build_prompt(question, expanded, history, system_prompt), num_image_tokens, image_token_index)
    # it must be a token prefix of the training sequence
    n_masked = _token_prefix_length(prefix, full, f"the prompt (question {question[:40]!r})")
    labels = [IGNORE_INDEX] * n_masked + full[n_masked:]
    if supervise_history and history:
        n_masked = _supervise_turns(tokenizer, history, full, labels, system_prompt, num_image_tokens,
                                    image_token_index)

    complete, incomplete = find_codebook_groups(full, codebook_ids)
    if incomplete:
        raise InputError(f"answer contains incomplete codebook groups: {answer[:60]!r}")
    truncated = False
    if max_length is not None and len(full) > max_length:
        if n_masked >= max_length:
            raise InputError(
                f"prompt is {n_masked} tokens (with {num_image_tokens} image tokens), no room for an "
                f"answer within max_length={max_length}"
            )
        cut = max_length
        for start, end in complete:
            if start < cut < end:
                cut = start  # never keep half a group: drop the group the cut would split
        full, labels, truncated = full[:cut], labels[:cut], True
        complete = [(s, e) for s, e in complete if e <= cut]
    num_targets = sum(1 for s, _ in complete if s >= n_masked)
    return EncodedConversation(full, labels, num_targets, truncated)
