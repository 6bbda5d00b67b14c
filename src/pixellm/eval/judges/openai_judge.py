"""LLM judge through any OpenAI-compatible chat endpoint (GPT-3.5 in the paper).

The prompt follows supplement Figure A.1: its preamble verbatim (image size, caption, the GT
objects with boxes as top-left / bottom-right x0, y0, x1, y1), then the question, the rewritten
answer and the request for one score per marked mention as JSON. The figure continues with the
question-*generation* requirements, which do not apply to judging; we replace them with the
scoring instruction.

Robustness: every request has a timeout; transient failures (timeouts, connection errors, 429,
5xx, an unparsable reply) are retried with exponential back-off; each usable reply is stored in
an SQLite cache keyed by (model, prompt) before moving on, so a re-run or an interrupted run
never asks the same thing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from pixellm.errors import ConfigError, PixelLMError
from pixellm.eval.judges.base import Judge, JudgeItem

API_KEY_ENV = "OPENAI_API_KEY"

PREAMBLE = (
    "You are an intelligent chatbot designed to evaluate the correctness of generative outputs for "
    "question-answer pairs. You receive a list of objects, each described in the image you are observing. "
    "The image has a height of {height} and a width of {width}. The image caption, objects in the image, "
    "and their respective bounding box coordinates are as follows:\n"
)
INSTRUCTION = (
    "Coordinates represent (top-left x, top-left y, bottom-right x, bottom-right y).\n\n"
    "Question: {question}\n"
    "Answer: {answer}\n\n"
    "In the answer, each of the {k} segmented mentions is followed, in parentheses, by the description of "
    "the object that the model's mask was matched to, or by (None) when the mask matched no object. "
    "For each mention, in order, judge whether the words that introduce it refer to the object described "
    "in its parentheses and whether that object is a correct part of the answer to the question. "
    "Give each mention a score between 0 and 1: 1 = clearly the same object and correct, "
    "0 = a different object, (None), or wrong.\n"
    'Respond with JSON only, in this form: {{"scores": [{example}]}}'
)


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixellm" / "judge_cache.sqlite"


def build_prompt(item: JudgeItem) -> str:
    """The Figure A.1 judge prompt for one sample."""
    lines = [PREAMBLE.format(height=item.height, width=item.width)]
    if item.caption:
        lines.append(f"{item.caption};\n")
    for desc, box in zip(item.descriptions, item.boxes):
        lines.append(f"{desc} [{', '.join(f'{v:.2f}' for v in box)}];\n")
    k = len(item.matched)
    example = ", ".join(f"s{i + 1}" for i in range(k))
    lines.append(
        "\n" + INSTRUCTION.format(question=item.question, answer=item.rewritten, k=k, example=example)
    )
    return "".join(lines)


class ReplyError(ValueError):
    """The judge's reply is not the requested JSON (retried)."""


def parse_scores(text: str, count: int) -> list[float]:
    """``{"scores": [...]}`` (optionally in a code fence, or a bare list) -> ``count`` floats in [0, 1]."""
    match = re.search(r"\{.*\}|\[.*\]", text or "", flags=re.S)
    if not match:
        raise ReplyError(f"no JSON in reply {text[:80]!r}")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise ReplyError(f"invalid JSON in reply ({err.msg})") from err
    scores = obj.get("scores") if isinstance(obj, dict) else obj
    if not isinstance(scores, list) or len(scores) != count:
        raise ReplyError(f"expected {count} scores, got {scores!r}")
    try:
        return [min(1.0, max(0.0, float(s))) for s in scores]
    except (TypeError, ValueError) as err:
        raise ReplyError(f"scores must be numbers, got {scores!r}") from err


class ReplyCache:
    """Persistent (key -> scores) store in one SQLite file; each write is committed at once."""

    def __init__(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, scores TEXT, reply TEXT)")
        self._db.commit()

    def get(self, key: str) -> list[float] | None:
        row = self._db.execute("SELECT scores FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else [float(s) for s in json.loads(row[0])]

    def put(self, key: str, scores: list[float], reply: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, scores, reply) VALUES (?, ?, ?)",
            (key, json.dumps(scores), reply),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class OpenAIJudge(Judge):
    """Scores mentions with a chat model at ``url`` (e.g. ``http://host:8000/v1``)."""

    name = "openai"

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        cache_path: str | os.PathLike | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 1.0,
        api_key: str | None = None,
    ) -> None:
        if not url:
            raise ConfigError(
                "the openai judge needs --judge-url (an OpenAI-compatible endpoint, e.g. .../v1)"
            )
        if not model:
            raise ConfigError("the openai judge needs --judge-model")
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ConfigError(
                f"the openai judge reads its API key from ${API_KEY_ENV}; set it (any value for a local server)"
            )
        from openai import OpenAI

        # Retries are ours (with back-off and reply validation), so the client never retries itself.
        self.client = OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)
        self.model, self.retries, self.backoff = model, int(retries), float(backoff)
        self.cache = ReplyCache(cache_path or default_cache_path())
        self.requests = 0  # HTTP requests sent (for reporting and tests)

    def cache_key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt]).encode("utf-8")).hexdigest()

    def score(self, item: JudgeItem) -> list[float]:
        if all(g is None for g in item.matched):  # nothing real to judge: padding scores 0
            return [0.0] * len(item.matched)
        prompt = build_prompt(item)
        key = self.cache_key(prompt)
        cached = self.cache.get(key)
        if cached is not None and len(cached) == len(item.matched):
            return cached
        reply, scores = self._ask(prompt, len(item.matched), item.key)
        self.cache.put(key, scores, reply)
        return scores

    def _ask(self, prompt: str, count: int, where: tuple[int, int]) -> tuple[str, list[float]]:
        import openai

        transient = (
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.RateLimitError,
            openai.InternalServerError,
            ReplyError,
        )
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self.requests += 1
                resp = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0
                )
                text = _reply_text(resp)
                return text, parse_scores(text, count)
            except transient as err:
                last = err
            except openai.APIStatusError as err:  # 4xx other than 429: asking again will not help
                raise PixelLMError(
                    f"judge endpoint refused the request (HTTP {err.status_code}): {err.message}"
                ) from err
        raise PixelLMError(
            f"judge gave no usable reply for image {where[0]} question {where[1]} after "
            f"{self.retries + 1} tries: {type(last).__name__}: {last}"
        )

    def close(self) -> None:
        self.cache.close()
        self.client.close()


def _reply_text(resp: Any) -> str:
    try:
        return resp.choices[0].message.content or ""
    except (AttributeError, IndexError) as err:
        raise ReplyError("reply has no choices[0].message.content") from err
