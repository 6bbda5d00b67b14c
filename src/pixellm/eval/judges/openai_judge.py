"""LLM judge through any OpenAI-compatible chat endpoint (GPT-3.5 in the paper).

The prompt follows supplement Figure A.1: its preamble verbatim (image size, caption, the GT
objects with boxes as top-left / bottom-right x0, y0, x1, y1), then the question, the rewritten
answer and the request for one score per marked mention as JSON. The figure continues with the
question-*generation* requirements, which do not apply to judging; we replace them with the
scoring instruction.

Requests go through the shared :class:`pixellm.chat_client.ChatClient` (the one used by data
generation): a timeout per request, bounded retries with exponential back-off on transient failures
and on unparsable replies, and an SQLite reply cache keyed by (model, messages, parameters), so a
re-run or an interrupted run never asks the same thing twice. Failures raise ``ChatError``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pixellm.chat_client import API_KEY_ENV, ChatClient, ChatError, ChatSettings, Transport
from pixellm.errors import ConfigError
from pixellm.eval.judges.base import Judge, JudgeItem

__all__ = ["API_KEY_ENV", "OpenAIJudge", "ReplyError", "build_prompt", "default_cache_path", "parse_scores"]

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
        transport: Transport | None = None,
    ) -> None:
        if not url:
            raise ConfigError(
                "the openai judge needs --judge-url (an OpenAI-compatible endpoint, e.g. .../v1)"
            )
        if not model:
            raise ConfigError("the openai judge needs --judge-model")
        settings = ChatSettings(
            api_url=url, model=model, api_key=api_key, timeout=float(timeout), retries=int(retries),
            backoff=float(backoff), temperature=0.0,
        )
        self.client = ChatClient(settings, cache_path or default_cache_path(), transport=transport)

    @property
    def requests(self) -> int:
        """Requests sent (for reporting and tests)."""
        return self.client.requests

    def score(self, item: JudgeItem) -> list[float]:
        if all(g is None for g in item.matched):  # nothing real to judge: padding scores 0
            return [0.0] * len(item.matched)
        count = len(item.matched)
        messages = [{"role": "user", "content": build_prompt(item)}]
        try:
            reply = self.client.ask(messages, accept=lambda text: parse_scores(text, count))
        except ChatError as err:
            raise ChatError(f"judge, image {item.key[0]} question {item.key[1]}: {err}") from err
        return parse_scores(reply, count)

    def close(self) -> None:
        self.client.close()
