"""datagen against a local OpenAI-compatible server (stdlib http.server in a thread)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from pixellm.chat_client import ChatError, ReplyCache
from pixellm.cli import main
from pixellm.data.muse import iter_questions, load_muse
from pixellm.errors import DataError
from pixellm.tools.datagen import (
    ChatSettings,
    ReplyError,
    filter_pairs,
    generate,
    parse_json_reply,
    validate_pair,
)


class FakeChat:
    """Chat-completions server; ``reply(request) -> (status, text)`` decides each answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = lambda req: (200, "{}")
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                status, text = fake.reply(body)
                payload = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                } if status == 200 else {"error": {"message": text}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")  # keep the client's back-off short in tests
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def prompt(req: dict) -> str:
        return next(p["text"] for p in req["messages"][0]["content"] if p["type"] == "text")


@pytest.fixture
def chat():
    fake = FakeChat()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _ann(i, cat_id, box):
    x, y, w, h = box
    return {"id": i, "image_id": 0, "category_id": cat_id, "bbox": box, "iscrowd": 0, "area": w * h,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


@pytest.fixture
def coco(tmp_path):
    """COCO instances JSON: image a.png with 3 instances, b.png with 1 (skipped), one crowd ann."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(tmp_path / name)
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 2, [10, 2, 8, 6]), _ann(3, 1, [20, 10, 6, 6]),
            {**_ann(4, 2, [0, 0, 3, 3]), "image_id": 1}, {**_ann(5, 2, [4, 4, 3, 3]), "iscrowd": 1}]
    data = {"images": [{"id": 0, "file_name": "a.png", "height": 20, "width": 30},
                       {"id": 1, "file_name": "b.png", "height": 20, "width": 30}],
            "annotations": anns, "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return path


def _good_generation(req):
    ids = [int(m) for m in re.findall(r"^\[(\d+)\]", FakeChat.prompt(req), flags=re.M)]
    pair = {"question": "Where do I put my drink after eating?",
            "answer": "Put it in the cup at the left {seg} next to the plate {seg}.",
            "targets": ids[:2], "descriptions": ["the cup at the left", "the plate"]}
    return 200, "```json\n" + json.dumps({"pairs": [pair]}) + "\n```"


def _settings(chat, **kw):
    return ChatSettings(api_url=chat.url, model="fake-vlm", timeout=5, retries=3, backoff=0.01, **kw)


def test_generate_writes_valid_muse_records_and_sends_the_image(chat, coco, tmp_path):
    chat.reply = _good_generation
    out = tmp_path / "gen.json"
    stats = generate(coco, out, _settings(chat), image_root=str(tmp_path), progress=False)
    assert (stats.images, stats.skipped, stats.records, stats.pairs, stats.requests) == (2, 1, 1, 1, 1)
    records = load_muse(out)  # validates {seg} count == targets
    q = next(iter_questions(records))
    assert q.descriptions() == ["the cup at the left", "the plate"]
    assert [t["id"] for t in q.targets] == [1, 2]
    assert len(records[0]["ann_list"]) == 3  # crowd annotation of the other image not mixed in
    content = chat.requests[0]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    prompt = content[1]["text"]
    assert "[1] plate at [10, 2, 18, 8];" in prompt and "{seg}" in prompt


def test_generate_reasks_invalid_replies_and_cache_makes_reruns_free(chat, coco, tmp_path):
    replies = iter([(200, json.dumps({"pairs": [{"question": "q", "answer": "a {seg}", "targets": [7]}]})),
                    _good_generation])
    chat.reply = lambda req: (lambda r: r(req) if callable(r) else r)(next(replies))
    out = tmp_path / "gen.json"
    stats = generate(coco, out, _settings(chat), image_root=str(tmp_path), progress=False)
    assert stats.requests == 2 and stats.rejected_pairs == 1 and stats.pairs == 1
    first = out.read_text()
    chat.reply = lambda req: (500, "must not be asked")
    again = generate(coco, out, _settings(chat), image_root=str(tmp_path), progress=False)
    assert again.requests == 0 and out.read_text() == first


def test_generate_with_one_attempt_counts_failure(chat, coco, tmp_path):
    chat.reply = lambda req: (200, json.dumps({"pairs": [{"question": "q", "answer": "one {seg}",
                                                          "targets": [0, 1]}]}))
    stats = generate(coco, tmp_path / "o.json", _settings(chat), image_root=str(tmp_path), attempts=1,
                     progress=False)
    assert stats.failed == 1 and stats.records == 0
    assert list(stats.reasons) == ["answer has N {seg} but N targets"]


def test_http_errors_are_retried(chat, coco, tmp_path):
    calls = []

    def flaky(req):
        calls.append(1)
        return (503, "busy") if len(calls) == 1 else _good_generation(req)

    chat.reply = flaky
    stats = generate(coco, tmp_path / "o.json", _settings(chat), image_root=str(tmp_path), progress=False)
    assert len(calls) == 2 and stats.pairs == 1


def test_filter_drops_flagged_pairs_and_reports_fraction(chat, tmp_path):
    rec = {"file_name": "a.png", "height": 4, "width": 4,
           "ann_list": [{"category_name": "cup", "bbox": [0, 0, 2, 2]}],
           "questions": ["What should I take on my outing?", "Which cup holds tea?", "Which cup?"],
           "answers": [[{"category_name": "cup", "bbox": [0, 0, 2, 2]}]] * 3,
           "text_answers": ["The cup {seg}.", "The cup {seg}.", "The cup {seg}."]}
    data = tmp_path / "d.json"
    data.write_text(json.dumps([rec]))

    def judge(req):
        text = re.search(r"^Question: (.*)$", FakeChat.prompt(req), flags=re.M).group(1)
        if "outing" in text:
            return 200, '{"vague": true, "omits_equivalent": false, "reason": "outing is open"}'
        if "tea" in text:
            return 200, '{"vague": "no", "omits_equivalent": "no", "reason": "fine"}'
        return 200, "I cannot decide."

    chat.reply = judge
    out, report = tmp_path / "f.json", tmp_path / "r.json"
    stats = filter_pairs(data, out, _settings(chat), send_image=False, report=report, progress=False)
    assert (stats.pairs, stats.kept, stats.vague, stats.unjudged) == (3, 1, 1, 1)
    assert stats.dropped_fraction == pytest.approx(2 / 3)
    assert load_muse(out)[0]["questions"] == ["Which cup holds tea?"]
    assert [v["kept"] for v in json.loads(report.read_text())["verdicts"]] == [False, True, False]
    assert "image_url" not in json.dumps(chat.requests[0])


def test_reply_parsing_and_validation():
    assert parse_json_reply('Sure! {"a": 1} hope it helps') == {"a": 1}
    with pytest.raises(ReplyError, match="no JSON"):
        parse_json_reply("no json here")
    ok = validate_pair({"question": "q", "answer": "x {seg} y {seg}", "targets": [1, 0]}, 2)
    assert ok.targets == [1, 0] and ok.descriptions == ["", ""]
    with pytest.raises(ReplyError, match="repeated"):
        validate_pair({"question": "q", "answer": "{seg}{seg}", "targets": [1, 1]}, 2)
    with pytest.raises(ReplyError, match="at least 2"):
        validate_pair({"question": "q", "answer": "{seg}", "targets": [1]}, 2, min_targets=2)


def test_cache_survives_reopening_and_rejects_a_file_that_is_not_one(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ReplyCache(path)
    cache.put("a", "m", "x")
    cache.close()
    assert ReplyCache(path).get("a") == "x" and ReplyCache(path).get("b") is None
    bad = tmp_path / "bad.sqlite"
    bad.write_text("garbage, not SQLite\n" * 100)
    with pytest.raises(DataError, match="bad.sqlite: not a reply cache"):
        ReplyCache(bad)


def test_http_refusal_is_one_chat_error_naming_the_image(chat, coco, tmp_path):
    chat.reply = lambda req: (400, "bad request")
    with pytest.raises(ChatError, match=r"datagen, image 0: .* refused the request \(HTTP 400\)"):
        generate(coco, tmp_path / "o.json", _settings(chat), image_root=str(tmp_path), progress=False)
    assert len(chat.requests) == 1  # a 4xx other than 429 is not retried


def test_cli_runs_and_reports_missing_image_as_one_line(chat, coco, tmp_path, capsys):
    chat.reply = _good_generation
    out = tmp_path / "cli.json"
    base = ["datagen", "generate", "--images", str(coco), "--out", str(out), "--api-url", chat.url,
            "--model", "m", "--no-progress", "--limit", "1"]
    assert main([*base, "--image-root", str(tmp_path)]) == 0
    assert "wrote 1 pairs in 1 records" in capsys.readouterr().out
    assert main([*base, "--image-root", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "record 0: image file not found" in err
