"""One cached chat client for every OpenAI-compatible endpoint: the LLM judge and data generation.

- **Cache**: one SQLite file (:class:`ReplyCache`), one row per reply, keyed by SHA-256 of
  (model, messages, request parameters, the caller's attempt number). Each reply is committed in
  its own transaction before the caller moves on, so a write is atomic (a crash loses at most the
  reply being written, never corrupts the file) and a re-run or an interrupted run never asks the
  same thing twice.
- **Retries**: timeouts, connection errors, HTTP 408 / 409 / 429 / 5xx and replies the caller
  rejects (``accept`` raises ``ValueError``) are retried up to ``retries`` times after the first
  try, waiting ``backoff * 2**(n-1)`` seconds before retry n (at least the server's
  ``Retry-After``, at most :data:`MAX_DELAY` seconds). Other HTTP errors stop at once.
- **API key**: ``ChatSettings.api_key``, else ``$OPENAI_API_KEY`` (:data:`API_KEY_ENV`), else the
  placeholder ``EMPTY`` (local servers such as vLLM accept any key; a 401 / 403 reply names the
  variable).
- **Errors**: every failure reaches the caller as :class:`ChatError`, a ``PixelLMError`` with a
  one-line message.

Standard library only at import; ``openai`` is imported when the default transport is built.
Tests pass their own ``transport``: a callable ``(model, messages, params) -> reply text`` that
raises :class:`Transient` for a retryable failure and :class:`ChatError` for a final one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixellm.errors import ConfigError, DataError, PixelLMError

API_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"  # sent when no key is configured (local servers need none)
MAX_DELAY = 60.0  # longest wait between two tries, seconds
RETRY_STATUS = (408, 409, 429)  # plus every 5xx

Message = dict[str, Any]
Transport = Callable[[str, list[Message], dict[str, Any]], str]


class ChatError(PixelLMError):
    """A chat request failed for good (refused, or no usable reply after every retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class Transient(Exception):
    """Raised by a transport for a failure worth retrying; never reaches the client's caller."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(_one_line(message))
        self.retry_after = retry_after


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def api_key(explicit: str | None = None) -> str:
    """The one key rule: the explicit key, else ``$OPENAI_API_KEY``, else ``EMPTY``."""
    return explicit or os.environ.get(API_KEY_ENV) or NO_KEY


@dataclass
class ChatSettings:
    """How to reach a chat endpoint and what to send with every request."""

    api_url: str
    model: str
    api_key: str | None = None  # None: see api_key()
    timeout: float = 120.0  # seconds per request
    retries: int = 5  # tries after the first one
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    temperature: float | None = None
    max_tokens: int | None = None
    json_mode: bool = False  # response_format=json_object (not every server supports it)

    def params(self) -> dict[str, Any]:
        """Request parameters besides model and messages (part of the cache key)."""
        params: dict[str, Any] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.json_mode:
            params["response_format"] = {"type": "json_object"}
        return params


class ReplyCache:
    """Persistent ``key -> reply`` store in one SQLite file; each ``put`` is its own transaction."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path))
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS chat_replies (key TEXT PRIMARY KEY, model TEXT, reply TEXT)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as err:
            raise DataError(f"not a reply cache (SQLite): {err}", path=str(self.path)) from err

    @staticmethod
    def key(model: str, messages: list[Message], params: dict[str, Any], attempt: int = 0) -> str:
        body = {"model": model, "messages": messages, "params": params, "attempt": attempt}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT reply FROM chat_replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, model: str, reply: str) -> None:
        with self._db:  # commits (or rolls back) this one write
            self._db.execute(
                "INSERT OR REPLACE INTO chat_replies (key, model, reply) VALUES (?, ?, ?)", (key, model, reply)
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM chat_replies").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class ChatClient:
    """Cached chat completions with bounded retries: ``ask(messages) -> reply text``."""

    def __init__(
        self,
        settings: ChatSettings,
        cache_path: str | os.PathLike,
        transport: Transport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if settings.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {settings.retries}")
        self.settings = settings
        self.transport = transport if transport is not None else OpenAITransport(settings)
        self.cache = ReplyCache(cache_path)
        self.sleep = sleep if sleep is not None else time.sleep
        self.requests = 0  # requests sent (every try of every cache miss)
        self.cache_hits = 0

    def ask(
        self, messages: list[Message], attempt: int = 0, accept: Callable[[str], Any] | None = None
    ) -> str:
        """The reply to ``messages``, from the cache or the endpoint.

        ``attempt`` is part of the cache key: a caller that asks again after a reply it could not
        use gets (and caches) a new reply, and a re-run replays the same sequence. ``accept``
        checks a reply; a ``ValueError`` from it means "unusable": such a reply is neither
        returned nor cached but retried like a transient failure.
        """
        s = self.settings
        params = s.params()
        key = ReplyCache.key(s.model, messages, params, attempt)
        cached = self.cache.get(key)
        if cached is not None and _usable(cached, accept):
            self.cache_hits += 1
            return cached
        last: Exception | None = None
        for n in range(s.retries + 1):
            if n:
                self.sleep(self._delay(n, last))
            self.requests += 1
            try:
                reply = self.transport(s.model, messages, params)
                if accept is not None:
                    accept(reply)
            except (Transient, ValueError) as err:
                last = err
                continue
            self.cache.put(key, s.model, reply)
            return reply
        why = str(last) if isinstance(last, Transient) else f"{type(last).__name__}: {last}"
        raise ChatError(f"no usable reply from {s.api_url} after {s.retries + 1} tries: {why}")

    def _delay(self, n: int, last: Exception | None) -> float:
        delay = self.settings.backoff * 2 ** (n - 1)
        retry_after = getattr(last, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(MAX_DELAY, delay)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.cache.close()
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()


def _usable(reply: str, accept: Callable[[str], Any] | None) -> bool:
    if accept is None:
        return True
    try:
        accept(reply)
    except ValueError:
        return False
    return True


class OpenAITransport:
    """The default transport: the ``openai`` client (its own retries off: ours apply)."""

    def __init__(self, settings: ChatSettings) -> None:
        try:
            import openai
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ConfigError("chat endpoints need the 'openai' package: pip install 'pixellm[judge]'") from err
        self.url = settings.api_url
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=settings.api_url, api_key=api_key(settings.api_key), timeout=settings.timeout, max_retries=0
        )

    def __call__(self, model: str, messages: list[Message], params: dict[str, Any]) -> str:
        openai = self._openai
        try:
            resp = self._client.chat.completions.create(model=model, messages=messages, **params)
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            raise Transient(f"{type(err).__name__}: {err}") from err
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRY_STATUS or status >= 500:
                raise Transient(f"{type(err).__name__}: {err.message}", _retry_after(err.response)) from err
            hint = f" (the API key comes from ${API_KEY_ENV})" if status in (401, 403) else ""
            raise ChatError(f"{self.url} refused the request (HTTP {status}): {err.message}{hint}") from err
        except openai.APIError as err:
            raise ChatError(f"{self.url}: {type(err).__name__}: {err}") from err
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as err:
            raise Transient("reply has no choices[0].message.content") from err

    def close(self) -> None:
        self._client.close()


def _retry_after(response: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (numeric form) headers, if any."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, TypeError, ValueError):
            continue
    return None
