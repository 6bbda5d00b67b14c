"""Terminal chat (``pixellm chat``) and the web app's request handling (no browser)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixellm.infer.generation import GenerationOptions
from pixellm.infer.predictor import Predictor
from pixellm.serve.app import answer_request, check_upload
from pixellm.serve.chat import run_chat
from pixellm.testing import save_random_predictor, scripted_pixellm


@pytest.fixture(scope="module")
def predictor():
    from pixellm.build import tiny_processor

    proc = tiny_processor()
    model = scripted_pixellm(proc, " the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    return Predictor(model, proc, GenerationOptions(max_new_tokens=22))


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_chat_session_commands(predictor, image, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"xx")
    script = "\n".join([
        "Where can I sit?",  # no image yet
        f"/image {bad}",
        f"/image {image}",
        "Where can I sit?",
        "And where else?",
        f"/save {tmp_path / 'saved'}",
        "/reset",
        "/frobnicate",
        "/quit",
        "never read",
    ]) + "\n"
    out = io.StringIO()
    assert run_chat(predictor, stdin=io.StringIO(script), stdout=out) == 0
    text = out.getvalue()
    assert "no image yet" in text
    assert "error:" in text and "bad.png" in text
    assert "image " + str(image) in text and "(60x40)" in text
    assert text.count("the chair [SEG] and this [SEG] and this") == 2  # two turns answered
    assert "[1] chair:" in text and "[2] target 2:" in text
    assert (tmp_path / "saved" / "overlay.png").is_file() and (tmp_path / "saved" / "prediction.json").is_file()
    assert "conversation cleared" in text and "unknown command /frobnicate" in text
    assert text.rstrip().endswith("bye")


def test_chat_command_with_piped_stdin(image, tmp_path):
    model = tmp_path / "model"
    save_random_predictor(model, answer=" the chair [SEG] and this [SEG]", loop_from=" and this [SEG]")
    res = subprocess.run(
        [sys.executable, "-m", "pixellm", "chat", "--model", str(model), "--image", str(image),
         "--max-new-tokens", "13", "--device", "cpu"],
        input="Where can I sit?\n/quit\n", capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert "the chair [SEG] and this" in res.stdout and "[1] chair:" in res.stdout


def test_web_request_handling(predictor, image, tmp_path):
    pic, html, status = answer_request(predictor, str(image), "Where can I sit?", 1.0, 10_000)
    assert pic.width >= 60 and pic.height > 40  # legend strip below
    assert html.count("pixellm-seg") == 2 and "2 target(s)" in status
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n junk")
    for path, question, limit_mb, limit_px, message in [
        (corrupt, "q", 1.0, 10_000, "not a readable image"),
        (tmp_path / "text.txt", "q", 1.0, 10_000, "not a readable image"),
        (image, "q", 0.0001, 10_000, "file is too large"),
        (image, "q", 1.0, 100, "image is too large"),
        (image, "  ", 1.0, 10_000, "type a question"),
        (None, "q", 1.0, 10_000, "upload an image"),
    ]:
        if path is not None and not path.exists():
            path.write_text("plain text")
        pic, html, status = answer_request(predictor, path and str(path), question, limit_mb, limit_px)
        assert pic is None and html == "" and "pixellm-error" in status and message in status, status
    assert check_upload(image, 1.0, 10_000).size == (60, 40)
