"""Judges of the MUSE protocol: ``oracle``, ``embedding`` (offline MiniLM) and ``openai``."""

from pixellm.eval.judges.base import JUDGES, Judge, JudgeItem, make_judge

__all__ = ["JUDGES", "Judge", "JudgeItem", "make_judge"]
