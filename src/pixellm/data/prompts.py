"""Prompt and answer text shared by every data source.

- Segmentation questions get an instruction suffix: the canonical one (docs/data.md) for
  inference and evaluation, a random paraphrase in training when an ``rng`` is given.
- Multi-referring questions/answers (supplement C.3): "Please segment the a, b and c in the
  image." / "a is {seg}, b is {seg} and c is {seg}."
- Answers built from target descriptions when a record has no ``text_answers``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from pixellm.data.sample import SEG_PLACEHOLDER

INSTRUCTION = "Please respond with segmentation mask."
# First entry is the canonical form; the rest are training-time paraphrases.
INSTRUCTIONS: tuple[str, ...] = (
    INSTRUCTION,
    "Please output segmentation mask.",
    "Please respond with segmentation masks.",
    "Please output the segmentation masks.",
)
NO_TARGET_ANSWER = "There is no such object in the image."


def join_words(items: Sequence[str]) -> str:
    """English list: ``a`` / ``a and b`` / ``a, b and c``."""
    items = list(items)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def with_instruction(question: str, rng: random.Random | None = None) -> str:
    """``{question} Please respond with segmentation mask.`` (a random paraphrase with ``rng``)."""
    suffix = INSTRUCTIONS[0] if rng is None else rng.choice(INSTRUCTIONS)
    return f"{question.rstrip()} {suffix}"


def answer_from_descriptions(descriptions: Sequence[str]) -> str:
    """Answer text naming each target once, with one ``{seg}`` after each name.

    ``[]`` -> "There is no such object in the image."; ``[a]`` -> "It is a {seg}.";
    ``[a, b, c]`` -> "They are a {seg}, b {seg} and c {seg}."
    """
    if not descriptions:
        return NO_TARGET_ANSWER
    named = [f"{d} {SEG_PLACEHOLDER}" for d in descriptions]
    lead = "It is" if len(named) == 1 else "They are"
    return f"{lead} {join_words(named)}."


def multi_refer_question(names: Sequence[str]) -> str:
    """Supplement C.3 question: "Please segment the {a}, {b} and {c} in the image.".

    Referring expressions often carry their own article ("the left person"): then the
    template's "the" is left out, so the question never reads "segment the the left person".
    """
    if not names:
        raise ValueError("a multi-referring question needs at least one name")
    article = "" if _DETERMINER.match(names[0]) else "the "
    return f"Please segment {article}{join_words(names)} in the image."


_DETERMINER = re.compile(
    r"^\s*(the|a|an|this|that|these|those|his|her|its|their|my|your|our|each|every|both|some|any)\s+\S",
    re.IGNORECASE,
)


def multi_refer_answer(names: Sequence[str]) -> str:
    """Supplement C.3 answer: "{a} is {seg}, {b} is {seg} and {c} is {seg}."."""
    if not names:
        raise ValueError("a multi-referring answer needs at least one name")
    return join_words([f"{n} is {SEG_PLACEHOLDER}" for n in names]) + "."
