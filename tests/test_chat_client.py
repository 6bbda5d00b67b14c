"""The one chat client of the LLM judge and data generation: cache, retries, key rule, error type.

Fake transports only (no HTTP): a transport is ``(model, messages, params) -> reply text``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm import chat_client
from pixellm.chat_client import (
    API_KEY_ENV,
    ChatClient,
    ChatError,
    ChatSettings,
    ReplyCache,
    Transient,
    api_key,
)
from pixellm.errors import PixelLMError
from pixellm.eval.judges import JudgeItem
from pixellm.eval.judges.openai_judge import OpenAIJudge
from pixellm.tools.datagen import filter_pairs, generate

MESSAGES = [{"role": "user", "content": "hello"}]


class FakeTransport:
    """Plays ``script`` (a reply string, or an exception to raise), then answers ``default``."""

    def __init__(self, *script, default="fine") -> None:
        self.script = list(script)
        self.default = default
        self.calls: list[tuple[str, list, dict]] = []

    def __call__(self, model, messages, params):
        self.calls.append((model, messages, params))
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, Exception):
            raise step
        return step(messages) if callable(step) else step


def client(tmp_path, transport, delays=None, **settings) -> ChatClient:
    s = ChatSettings(api_url="http://fake/v1", model="m", **{"retries": 3, "backoff": 1.0, **settings})
    return ChatClient(s, tmp_path / "cache.sqlite", transport=transport,
                      sleep=(delays.append if delays is not None else lambda _: None))


def test_cache_hit_avoids_a_second_call_and_survives_a_new_client(tmp_path):
    fake = FakeTransport("one")
    with client(tmp_path, fake) as c:
        assert c.ask(MESSAGES) == "one" and c.ask(MESSAGES) == "one"
        assert len(fake.calls) == 1 and (c.requests, c.cache_hits) == (1, 1)
        assert c.ask(MESSAGES, attempt=1) == "fine"  # the attempt number is part of the key
    with client(tmp_path, fake) as again:  # a re-run reads the same file
        assert again.ask(MESSAGES) == "one" and again.requests == 0
    # Model, messages and parameters are all part of the key.
    for other in (dict(model="m2"), dict(temperature=0.5)):
        with ChatClient(ChatSettings(api_url="u", **{"model": "m", **other}), tmp_path / "cache.sqlite",
                        transport=fake) as c:
            assert c.ask(MESSAGES) == "fine" and c.requests == 1
    assert len(fake.calls) == 4


def test_cache_key_covers_model_messages_params_and_attempt():
    k = ReplyCache.key("m", MESSAGES, {"temperature": 0.0})
    assert k == ReplyCache.key("m", [dict(MESSAGES[0])], {"temperature": 0.0})
    others = [ReplyCache.key("m2", MESSAGES, {"temperature": 0.0}),
              ReplyCache.key("m", [{"role": "user", "content": "bye"}], {"temperature": 0.0}),
              ReplyCache.key("m", MESSAGES, {}), ReplyCache.key("m", MESSAGES, {"temperature": 0.0}, 1)]
    assert len({k, *others}) == 5


def test_retry_then_success_with_exponential_backoff(tmp_path):
    delays: list[float] = []
    fake = FakeTransport(Transient("busy"), Transient("busy"), Transient("rate limited", retry_after=7.0), "ok")
    with client(tmp_path, fake, delays) as c:
        assert c.ask(MESSAGES) == "ok"
        assert c.requests == 4 and delays == [1.0, 2.0, 7.0]  # back-off doubles; Retry-After wins when longer
    delays.clear()
    with client(tmp_path, FakeTransport(*[Transient("x")] * 9), delays, retries=8) as c:
        with pytest.raises(ChatError):
            c.ask([{"role": "user", "content": "other"}])
    assert delays[:3] == [1.0, 2.0, 4.0] and max(delays) == chat_client.MAX_DELAY  # capped


def test_exhausted_retries_raise_the_one_error_type_with_one_line(tmp_path):
    fake = FakeTransport(*[Transient("HTTP 503\nservice\nunavailable")] * 4)
    with client(tmp_path, fake) as c, pytest.raises(ChatError) as info:
        c.ask(MESSAGES)
    assert isinstance(info.value, PixelLMError) and len(fake.calls) == 4  # 1 try + 3 retries
    msg = str(info.value)
    assert "\n" not in msg and msg == "no usable reply from http://fake/v1 after 4 tries: HTTP 503 service unavailable"


def test_final_error_is_not_retried_and_nothing_is_cached(tmp_path):
    fake = FakeTransport(ChatError("http://fake/v1 refused the request (HTTP 400): bad"))
    with client(tmp_path, fake) as c:
        with pytest.raises(ChatError, match="HTTP 400"):
            c.ask(MESSAGES)
        assert len(fake.calls) == 1 and len(c.cache) == 0


def test_rejected_replies_are_retried_and_never_cached(tmp_path):
    def accept(text):
        if text != "good":
            raise ValueError("not good")

    fake = FakeTransport("bad", "good")
    with client(tmp_path, fake) as c:
        assert c.ask(MESSAGES, accept=accept) == "good" and c.requests == 2
    with client(tmp_path, FakeTransport("bad")) as c:
        assert c.ask(MESSAGES, accept=accept) == "good" and c.requests == 0
    with client(tmp_path, FakeTransport(default="bad"), retries=1) as c:
        with pytest.raises(ChatError, match="after 2 tries: ValueError: not good"):
            c.ask(MESSAGES, attempt=1, accept=accept)
        assert len(c.cache) == 1  # only "good"


def test_one_api_key_rule(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key() == "EMPTY" and api_key("k") == "k"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert api_key() == "from-env" and api_key("k") == "k"


def test_openai_transport_maps_errors(tmp_path, monkeypatch):
    """The default transport: 429 / 5xx / timeouts are transient, other statuses final."""
    import httpx
    import openai

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    transport = chat_client.OpenAITransport(ChatSettings(api_url="http://fake/v1", model="m"))
    assert transport._client.api_key == "EMPTY" and transport._client.max_retries == 0
    request = httpx.Request("POST", "http://fake/v1/chat/completions")

    def failing(status, headers=None):
        def create(**kw):
            raise openai.APIStatusError("boom", response=httpx.Response(status, headers=headers, request=request),
                                        body=None)
        return create

    for status, headers, kind in [(429, {"retry-after": "3"}, Transient), (503, None, Transient),
                                  (401, None, ChatError), (404, None, ChatError)]:
        monkeypatch.setattr(transport._client.chat.completions, "create", failing(status, headers))
        with pytest.raises(kind) as info:
            transport("m", MESSAGES, {})
        if status == 429:
            assert info.value.retry_after == 3.0
        if status == 401:
            assert "OPENAI_API_KEY" in str(info.value)

    def timeout(**kw):
        raise openai.APITimeoutError(request=request)

    monkeypatch.setattr(transport._client.chat.completions, "create", timeout)
    with pytest.raises(Transient, match="APITimeoutError"):
        transport("m", MESSAGES, {})
    transport.close()


def test_judge_and_datagen_use_the_same_client_class(tmp_path, monkeypatch):
    used: list[type] = []
    ask = ChatClient.ask

    def spy(self, *args, **kw):
        used.append(type(self))
        return ask(self, *args, **kw)

    monkeypatch.setattr(ChatClient, "ask", spy)

    # The judge: one score per mention, parsed from the cached reply on a re-run.
    fake = FakeTransport('{"scores": [0.8]}')
    judge = OpenAIJudge(url="http://fake/v1", model="j", cache_path=tmp_path / "j.sqlite", transport=fake)
    item = JudgeItem(key=(0, 0), question="q?", answer="the cat [SEG]", rewritten="the cat (a cat)", matched=[0],
                     descriptions=["a cat"],
                     boxes=[[0, 0, 1, 1]], height=4, width=4)
    assert type(judge.client) is ChatClient
    assert judge.score(item) == [0.8] and judge.score(item) == [0.8] and judge.requests == 1
    assert fake.calls[0][2] == {"temperature": 0.0}
    judge.close()

    # Data generation: generate and filter, through a fake transport too.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    rec = {"file_name": "a.png", "height": 8, "width": 8,
           "ann_list": [{"category_name": "cup", "bbox": [0, 0, 2, 2]},
                        {"category_name": "plate", "bbox": [3, 3, 2, 2]}]}
    (tmp_path / "in.json").write_text(json.dumps([rec]))
    pair = {"question": "Where?", "answer": "the cup {seg} and the plate {seg}", "targets": [0, 1]}
    settings = ChatSettings(api_url="http://fake/v1", model="g")
    stats = generate(tmp_path / "in.json", tmp_path / "gen.json", settings, image_root=str(tmp_path),
                     progress=False, transport=FakeTransport(json.dumps({"pairs": [pair]})))
    assert stats.pairs == 1 and (tmp_path / "gen.json.cache.sqlite").is_file()
    verdict = FakeTransport('{"vague": false, "omits_equivalent": false}')
    kept = filter_pairs(tmp_path / "gen.json", tmp_path / "kept.json", settings, send_image=False,
                        progress=False, transport=verdict)
    assert kept.kept == 1 and len(verdict.calls) == 1
    assert used == [ChatClient] * 4
