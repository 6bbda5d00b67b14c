"""Answer rewriting (MUSE protocol step 2) and the text that introduces each target.

``rewrite_answer`` replaces the i-th ``[SEG]`` marker by ``(description of the GT object that
mask i was matched to)`` or ``(None)``, as in the "Modified Answer" of supplement Figure A.1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pixellm.eval.predictions import SEG_MARKER

NONE_TEXT = "None"

_CLAUSE_END = re.compile(r"[.,;:!?\n]")
_DETERMINERS = frozenset(
    "the a an this that these those its his her their my your our some each every".split()
)
_TRAILING_VERBS = frozenset("is are was were be being been".split())
_MAX_PHRASE_WORDS = 6


def rewrite_answer(answer: str, descriptions: Sequence[str | None]) -> str:
    """Replace the i-th marker by ``(descriptions[i])`` (``(None)`` when ``None``).

    Spacing: one space before the parenthesis, as in Figure A.1.
    """
    parts = answer.split(SEG_MARKER)
    if len(parts) - 1 != len(descriptions):
        raise ValueError(
            f"answer has {len(parts) - 1} {SEG_MARKER} markers but {len(descriptions)} descriptions"
        )
    out = [parts[0]]
    for desc, rest in zip(descriptions, parts[1:]):
        text = f"({desc if desc is not None else NONE_TEXT})"
        if out[-1] and not out[-1].endswith((" ", "\n")):
            text = " " + text
        out.append(text)
        out.append(rest)
    return "".join(out)


def target_phrases(answer: str) -> list[str]:
    """The words that introduce each marker: "on the large bed [SEG]" -> "large bed".

    Heuristic (English): take the clause before the marker (back to the previous marker or
    punctuation), drop a trailing copula ("the cat is [SEG]"), keep the words after the last
    determiner, at most 6 words. A marker with no words before it gives "".
    """
    phrases = []
    for before in answer.split(SEG_MARKER)[:-1]:
        clause = _CLAUSE_END.split(before)[-1]
        words = re.findall(r"[\w'-]+", clause)
        while words and words[-1].lower() in _TRAILING_VERBS:
            words.pop()
        cut = max((i for i, w in enumerate(words) if w.lower() in _DETERMINERS), default=-1)
        tail = words[cut + 1 :] if cut + 1 < len(words) else words
        phrases.append(" ".join(tail[-_MAX_PHRASE_WORDS:]))
    return phrases
