"""Oracle judge: every mention is right. Scores 1 for a real match, 0 for padding (pure mask quality)."""

from __future__ import annotations

from pixellm.eval.judges.base import Judge, JudgeItem


class OracleJudge(Judge):
    name = "oracle"

    def score(self, item: JudgeItem) -> list[float]:
        return [0.0 if g is None else 1.0 for g in item.matched]
