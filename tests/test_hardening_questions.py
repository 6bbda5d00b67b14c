"""Questions that cannot be answered as given (issue 12 rows 2 and 11)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from pixellm.errors import InputError
from pixellm.infer.predictor import Predictor
from pixellm.testing import save_random_predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_random_predictor(d, answer=" the chair [SEG]")
    return d


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.from_pretrained(model_dir, device="cpu")


IMAGE = np.zeros((30, 40, 3), np.uint8)


def test_context_comes_from_the_config(predictor):
    assert predictor.context_length == predictor.model.config.text_config.max_position_embeddings


def test_too_long_question_fails_before_any_compute(predictor, monkeypatch):
    words = " ".join(["chair"] * 5000)

    def no_compute(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(predictor.model, "encode_images", no_compute)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"the question is too long: \d+ tokens, at most \d+ fit \(context 2048"):
        predictor(IMAGE, words)
    with pytest.raises(InputError, match="too long"):
        predictor.teacher_forced([IMAGE], [words], ["a [SEG]"])
    assert time.perf_counter() - start < 10


def test_question_that_fits_only_without_the_answer_room(predictor):
    limit = predictor.context_length
    budget = limit - predictor.processor.num_image_tokens
    n = len(predictor.processor.tokenizer(predictor.prepare_question("x"), add_special_tokens=False).input_ids)
    question = "x " * (budget - n - 20)
    from pixellm.infer.generation import GenerationOptions

    with pytest.raises(InputError, match="too long"):
        predictor(IMAGE, question, options=GenerationOptions(max_new_tokens=200))


def test_web_demo_reports_a_long_question_and_keeps_serving(predictor, tmp_path):
    from PIL import Image

    from pixellm.serve.app import answer_request

    path = tmp_path / "a.png"
    Image.fromarray(IMAGE).save(path)
    overlay, answer, status = answer_request(predictor, str(path), "why " * 25000, 20.0, None)
    assert overlay is None and "too long" in status
    overlay, answer, status = answer_request(predictor, str(path), "where is the chair?", 20.0, None)
    assert overlay is not None and "[SEG]" not in status


def test_non_utf8_question_is_decoded_with_replacement(predictor):
    broken = b"where is the caf\xe9 chair?".decode("utf-8", errors="surrogateescape")
    assert predictor.prepare_question(broken).startswith("where is the caf\ufffd chair?")
    assert predictor(IMAGE, broken).answer  # today: TypeError from the tokenizer
    assert predictor.prepare_question("\ud800 x").startswith("? x")


def test_non_utf8_question_on_the_command_line(model_dir, tmp_path):
    import os

    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(IMAGE).save(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LC_ALL": "C.UTF-8"}
    run = subprocess.run(
        [sys.executable.encode(), b"-m", b"pixellm", b"predict", b"--model", str(model_dir).encode(),
         b"--image", str(path).encode(), b"--question", b"caf\xe9?", b"--device", b"cpu",
         b"--max-new-tokens", b"6"],
        env=env, capture_output=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    assert b"Traceback" not in run.stderr
