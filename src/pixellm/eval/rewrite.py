"""Answer rewriting (MUSE protocol step 2). ``target_phrases`` (the words that introduce each
target) lives in ``pixellm.conventions`` and is re-exported here.

``rewrite_answer`` replaces the i-th ``[SEG]`` marker by ``(description of the GT object that
mask i was matched to)`` or ``(None)``, as in the "Modified Answer" of supplement Figure A.1.
"""

from __future__ import annotations

from collections.abc import Sequence

from pixellm.conventions import SEG_MARKER, target_phrases  # noqa: F401  (re-exported)

NONE_TEXT = "None"


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
