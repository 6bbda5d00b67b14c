"""Judge interface (MUSE protocol step 3): one score in [0, 1] per predicted mask.

A judge reads the rewritten answer, where every ``[SEG]`` marker became ``(description of the
matched GT object)`` or ``(None)``, and says how well each marked mention fits the object it was
matched to. The protocol gates intersections at ``score > 0.5``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pixellm.errors import ConfigError

JUDGES = ("oracle", "embedding", "openai")


@dataclass
class JudgeItem:
    """What a judge sees of one question-answer sample (K predictions, G GT objects)."""

    key: tuple[int, int]  # (image index, question index)
    question: str
    answer: str  # generated answer with K "[SEG]" markers
    rewritten: str  # markers replaced by "(description)" / "(None)"
    matched: list[int | None]  # [K]: GT index matched to prediction k, None = padding
    descriptions: list[str]  # [G]
    boxes: list[list[float]]  # [G] x [x0, y0, x1, y1]
    height: int
    width: int
    caption: str | None = None
    names: list[str] = field(default_factory=list)  # [G] category names (optional)


class Judge(ABC):
    """Scores the K predictions of one sample. Implementations must be deterministic."""

    name: str = "judge"

    @abstractmethod
    def score(self, item: JudgeItem) -> list[float]:
        """``[K]`` scores in [0, 1]; a prediction matched to padding must score 0."""

    def close(self) -> None:
        """Release resources (caches, connections)."""
        return None


def make_judge(name: str, **options: object) -> Judge:
    """Build a judge by name: ``oracle``, ``embedding`` or ``openai`` (options go to its constructor)."""
    if name == "oracle":
        from pixellm.eval.judges.oracle import OracleJudge

        return OracleJudge(**options)
    if name == "embedding":
        from pixellm.eval.judges.embedding import EmbeddingJudge

        return EmbeddingJudge(**options)
    if name == "openai":
        from pixellm.eval.judges.openai_judge import OpenAIJudge

        return OpenAIJudge(**options)
    raise ConfigError(f"unknown judge '{name}' (choose from {', '.join(JUDGES)})")
