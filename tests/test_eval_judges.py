"""The three judges: oracle, offline embedding (bundled MiniLM), OpenAI-compatible (local test server)."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pixellm.chat_client import ChatError
from pixellm.cli import main
from pixellm.data.masks import encode_rle
from pixellm.errors import ConfigError
from pixellm.eval import evaluate_muse
from pixellm.eval.judges import JudgeItem, make_judge
from pixellm.eval.judges.embedding import similarity_to_score
from pixellm.eval.judges.openai_judge import build_prompt, parse_scores

H, W = 6, 8


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


CAT, LAPTOP = box(0, 3, 0, 4), box(3, 6, 2, 8)
TARGETS = [
    {
        "category_name": "cat",
        "rephrased_name": "A grey cat lounging on a closed laptop",
        "bbox": [0, 0, 4, 3],
    },
    {
        "category_name": "laptop",
        "rephrased_name": "A closed silver laptop under the cat",
        "bbox": [2, 3, 6, 3],
    },
]


def gt_records() -> list[dict]:
    answers = [[{**t, "segmentation": encode_rle(m)} for t, m in zip(TARGETS, (CAT, LAPTOP))]]
    q = "How can I listen to music while petting my cat?"
    return [{"height": H, "width": W, "questions": [q], "answers": answers, "caption": "A cat on a laptop"}]


ANSWER = "Pet the chubby furry cat [SEG] lying on the silver laptop [SEG]."


def prediction(masks) -> list[dict]:
    answer = ANSWER if len(masks) == 2 else "Pet the chubby furry cat [SEG] lying on the silver laptop."
    return [{"image": 0, "question": 0, "answer": answer, "masks": [encode_rle(m) for m in masks]}]


def item(matched) -> JudgeItem:
    return JudgeItem(
        key=(0, 0),
        question="q",
        answer=ANSWER,
        rewritten="",
        matched=matched,
        descriptions=[t["rephrased_name"] for t in TARGETS],
        boxes=[[0, 0, 4, 3], [2, 3, 8, 6]],
        height=H,
        width=W,
        names=[t["category_name"] for t in TARGETS],
    )


def test_oracle_judge():
    judge = make_judge("oracle")
    assert judge.score(item([1, None])) == [1.0, 0.0]
    # Masks in the wrong order: matching follows the masks, the oracle ignores the words -> 1.
    assert evaluate_muse(gt_records(), prediction([LAPTOP, CAT]))["gIoU"] == 1.0
    with pytest.raises(ConfigError, match="unknown judge 'gpt'"):
        make_judge("gpt")


@pytest.fixture(scope="module")
def embedding_judge():
    return make_judge("embedding")


def test_embedding_judge_scores_right_and_wrong_mentions(embedding_judge):
    sims = embedding_judge.object_similarities(item([0, 1]))
    assert sims.shape == (2, 2) and sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
    right = embedding_judge.score(item([0, 1]))
    swapped = embedding_judge.score(item([1, 0]))
    assert min(right) > 0.5 and max(swapped) <= 0.5
    assert embedding_judge.score(item([0, None]))[1] == 0.0
    # End to end: masks in answer order pass the gate, swapped masks are matched to the wrong
    # descriptions (the cat mention gets the laptop) and are gated to zero.
    assert evaluate_muse(gt_records(), prediction([CAT, LAPTOP]), judge=embedding_judge)["gIoU"] == 1.0
    swapped_run = evaluate_muse(gt_records(), prediction([LAPTOP, CAT]), judge=embedding_judge)
    assert swapped_run["gIoU"] == 0.0 and swapped_run["judge"] == "embedding"


def test_embedding_threshold_mapping():
    np.testing.assert_allclose(similarity_to_score([0.1, 0.25, 0.40, 0.55, 0.9]), [0, 0, 0.5, 1, 1])


# ---- OpenAI-compatible judge against a local server -------------------------------------------


class FakeChatServer:
    """Minimal /v1/chat/completions: scores 0.9 per "(description)", 0.1 for "(None)" or "silver".

    ``plan`` holds the behaviour of the next requests ("500", "401", "garbage", "slow"); then it answers.
    """

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization", ""))
                action = server.plan.pop(0) if server.plan else "ok"
                if action in ("500", "401"):
                    return self._send(int(action), {"error": {"message": "nope", "type": "x"}})
                if action == "slow":
                    time.sleep(1.0)
                prompt = body["messages"][0]["content"]
                answer = re.search(r"^Answer: (.*)$", prompt, flags=re.M).group(1)
                scores = [
                    0.1 if d == "None" or "silver" in d else 0.9 for d in re.findall(r"\(([^()]*)\)", answer)
                ]
                content = (
                    "I think so."
                    if action == "garbage"
                    else "```json\n" + json.dumps({"scores": scores}) + "\n```"
                )
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                })  # fmt: skip

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    s = FakeChatServer()
    yield s
    s.close()


def openai_options(server, tmp_path, **over) -> dict:
    return {
        "url": server.url,
        "model": "judge-1",
        "cache_path": tmp_path / "cache.sqlite",
        "backoff": 0.01,
        **over,
    }


def test_openai_judge_retries_then_caches(server, tmp_path):
    server.plan = ["500", "garbage"]  # a server error and an unparsable reply, both retried
    opts = openai_options(server, tmp_path, retries=3)
    m = evaluate_muse(
        gt_records(), prediction([CAT, LAPTOP]), judge="openai", judge_options=opts, details=True
    )
    assert len(server.requests) == 3 and server.auth[0] == "Bearer test-key"
    assert server.requests[0]["model"] == "judge-1"
    # The cat mention scores 0.9 (passes), the laptop description scores 0.1 (gated).
    assert m["generated"]["per_sample"][0]["scores"] == [0.9, 0.1]
    assert m["gIoU"] == pytest.approx(0.5) and m["judge"] == "openai"
    # A re-run (new judge, same cache file) never asks again.
    again = evaluate_muse(gt_records(), prediction([CAT, LAPTOP]), judge="openai", judge_options=opts)
    assert len(server.requests) == 3 and again["gIoU"] == m["gIoU"]


def test_openai_prompt_follows_figure_a1(server, tmp_path):
    evaluate_muse(
        gt_records(), prediction([CAT]), judge="openai", judge_options=openai_options(server, tmp_path)
    )
    prompt = server.requests[0]["messages"][0]["content"]
    assert prompt.startswith("You are an intelligent chatbot designed to evaluate the correctness")
    assert f"The image has a height of {H} and a width of {W}." in prompt
    assert "A cat on a laptop;\n" in prompt
    assert "A grey cat lounging on a closed laptop [0.00, 0.00, 4.00, 3.00];" in prompt
    assert "A closed silver laptop under the cat [2.00, 3.00, 8.00, 6.00];" in prompt  # x0,y0,x1,y1
    assert "Coordinates represent (top-left x, top-left y, bottom-right x, bottom-right y)." in prompt
    assert (
        "Answer: Pet the chubby furry cat (A grey cat lounging on a closed laptop) lying on the silver laptop."
        in prompt
    )


def test_openai_judge_timeout_and_refusal(server, tmp_path):
    server.plan = ["slow", "slow"]
    opts = openai_options(server, tmp_path, retries=1, timeout=0.2)
    with pytest.raises(
        ChatError, match=r"judge, image 0 question 0: no usable reply from .* after 2 tries: APITimeoutError"
    ):
        evaluate_muse(gt_records(), prediction([CAT]), judge="openai", judge_options=opts)
    server.plan = ["401"]
    n = len(server.requests)
    with pytest.raises(ChatError, match="refused the request \\(HTTP 401\\).*OPENAI_API_KEY"):
        evaluate_muse(
            gt_records(), prediction([CAT]), judge="openai", judge_options=openai_options(server, tmp_path)
        )
    assert len(server.requests) == n + 1  # no retry on a 4xx


def test_openai_judge_configuration_errors_and_key_rule(server, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="--judge-url"):
        make_judge("openai", model="m")
    with pytest.raises(ConfigError, match="--judge-model"):
        make_judge("openai", url=server.url)
    # The shared key rule: without $OPENAI_API_KEY the placeholder goes out (local servers need none).
    monkeypatch.delenv("OPENAI_API_KEY")
    evaluate_muse(gt_records(), prediction([CAT]), judge="openai", judge_options=openai_options(server, tmp_path))
    assert server.auth[-1] == "Bearer EMPTY"


def test_parse_scores_and_prompt_without_caption():
    assert parse_scores('{"scores": [1, 0.2, 7]}', 3) == [1.0, 0.2, 1.0]
    assert parse_scores("Sure: [0.5]", 1) == [0.5]
    with pytest.raises(ValueError, match="expected 2 scores"):
        parse_scores('{"scores": [1]}', 2)
    prompt = build_prompt(item([0, 1]))
    assert "each of the 2 segmented mentions" in prompt and '{"scores": [s1, s2]}' in prompt


def test_cli_openai_judge(server, tmp_path):
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps(gt_records()))
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(prediction([CAT, LAPTOP])[0]) + "\n")
    out = tmp_path / "m.json"
    args = [
        "eval",
        "muse",
        "--gt",
        str(gt),
        "--pred",
        str(pred),
        "--judge",
        "openai",
        "--judge-url",
        server.url,
    ]
    args += [
        "--judge-model",
        "judge-1",
        "--judge-cache",
        str(tmp_path / "c.sqlite"),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    assert json.loads(out.read_text())["judge"] == "openai" and len(server.requests) == 1
