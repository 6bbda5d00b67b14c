"""``pixellm serve`` end to end in headless Chromium (Playwright via npm ``playwright-core``).

Needs ``/usr/bin/chromium`` (Debian ``chromium``) and ``tests/browser/node_modules``
(``cd tests/browser && npm ci``); missing either is a failure with the command to fix it, not a
skip. The server runs a tiny scripted random model (answers are gibberish-shaped but always
contain targets), so the test checks structure: a picture in the target colours, coloured names
in the answer, clear errors for bad uploads, and a server that keeps answering.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixellm.infer.overlay import colour
from pixellm.testing import save_random_predictor

pytestmark = pytest.mark.browser

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server at {url} did not answer within {timeout:.0f}s")


def test_serve_end_to_end_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium chromium-driver`")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install Node.js (e.g. `apt-get install -y nodejs npm`)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is missing: run `cd {BROWSER_DIR} && npm ci`")

    model = tmp_path / "model"
    save_random_predictor(model, answer=" the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    rng = np.random.default_rng(0)
    good = tmp_path / "room.png"
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 40)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)  # ~270 KB
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pixellm", "serve", "--model", str(model), "--port", str(port),
         "--device", "cpu", "--max-new-tokens", "22", "--max-upload-mb", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        _wait_http(url, server)
        run = subprocess.run(
            [node, "serve_e2e.mjs", url, str(good), str(corrupt), str(big), str(notes)],
            cwd=BROWSER_DIR, capture_output=True, text=True, timeout=240, env={**env, "CHROMIUM": CHROMIUM},
        )
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert "error" not in out, out.get("error")
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    first, bad_file, too_big, last = out["steps"]
    want = "{},{},{}".format(*colour(0))
    for step in (first, last):
        # 22 tokens: "the chair [SEG] and this [SEG] and this" -> two targets
        assert step["status"].startswith("2 target(s)")
        assert step["answerHtml"].count('class="pixellm-seg"') == 2
        assert 'class="pixellm-target"' in step["answerHtml"] and ">chair</span>" in step["answerHtml"]
        pic = step["overlay"]
        assert pic["width"] >= 90 and pic["height"] > 60  # the image plus the legend strip
        assert want in pic["colours"]  # target 1's colour is in the picture
    assert "not a readable image" in bad_file["status"] and bad_file["overlay"] is None
    assert "too large" in too_big["status"] and too_big["overlay"] is None
    assert "Invalid file type" in out["rejected"]["toast"]
