"""Model folders and devices that cannot work fail at once with one line (issue 12 rows 1, 9, 10, 12, 13)."""

from __future__ import annotations

import errno
import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pixellm.cli import main
from pixellm.errors import ConfigError
from pixellm.files import DiskFullError, atomic_folder, check_model_folder, disk_guard
from pixellm.testing import save_checkpoint, save_random_predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_random_predictor(d, answer=" the chair [SEG]")
    return d


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def predict(model, image, capsys, *extra):
    code = main(["predict", "--model", str(model), "--image", str(image), "--question", "q",
                 "--max-new-tokens", "8", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


def copy_model(model_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst)
    return dst


def test_missing_config_is_one_line_error_at_once(model_dir, image, tmp_path, capsys):
    broken = copy_model(model_dir, tmp_path)
    (broken / "config.json").unlink()
    start = time.perf_counter()
    code, err = predict(broken, image, capsys, "--device", "cpu")
    # today: the default 7B config is built (tens of GB) instead
    assert time.perf_counter() - start < 10
    assert code == 1 and len(err) == 1
    assert str(broken) in err[0] and "missing config.json" in err[0]


@pytest.mark.parametrize("cut", ["empty", "half", "header"])
def test_truncated_weights_are_one_line_error_naming_the_file(model_dir, image, tmp_path, capsys, cut):
    broken = copy_model(model_dir, tmp_path)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"empty": b"", "half": data[: len(data) // 2], "header": data[:40]}[cut])
    code, err = predict(broken, image, capsys, "--device", "cpu")
    assert code == 1 and len(err) == 1
    assert str(weights) in err[0] and "unreadable weights file" in err[0]


def test_export_with_only_config_is_refused(model_dir, tmp_path):
    broken = tmp_path / "final"
    broken.mkdir()
    shutil.copy(model_dir / "config.json", broken / "config.json")
    with pytest.raises(ConfigError, match="missing model.safetensors"):
        check_model_folder(broken)


def test_cuda_on_cpu_only_torch_is_one_line_error(model_dir, image, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = predict(model_dir, image, capsys, "--device", "cuda")
    assert code == 1 and len(err) == 1 and "no usable CUDA" in err[0] and "--device cpu" in err[0]
    code, err = predict(model_dir, image, capsys, "--device", "warp9")
    assert code == 1 and len(err) == 1 and "unknown device 'warp9'" in err[0]


# -- export and checkpoints: atomic, and a full disk is one line ------------------------------------


def test_export_is_atomic_when_killed(model_dir, tmp_path):
    """A process killed (SIGKILL) half way through the export leaves no ``final/``; an older
    ``final/`` stays whole."""
    import os
    import subprocess
    import sys

    final = tmp_path / "final"
    script = f"""
import os, signal
from pixellm.infer.predictor import Predictor
from pixellm.train.trainer import export_model
p = Predictor.from_pretrained({str(model_dir)!r})
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)  # after the model files, before the processor files
p.processor.save_pretrained = die
export_model(p.model, p.processor, {str(final)!r})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert run.returncode == -9
    assert not final.exists()  # today: final/ with config.json and weights, no tokenizer
    shutil.copytree(model_dir, final)
    before = sorted(p.name for p in final.iterdir())
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert run.returncode == -9
    assert sorted(p.name for p in final.iterdir()) == before
    check_model_folder(final)


def test_checkpoint_on_full_disk_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    from pixellm.files import shutil as files_shutil
    from pixellm.train import checkpoint as ckpt

    weights = {"w": torch.arange(6.0)}
    first = save_checkpoint(tmp_path, 1, weights, {"state": {}, "param_groups": []}, {"step": 1})

    def full_disk_save(obj, path, *a, **k):  # what torch.save does on ENOSPC
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files_shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(DiskFullError, match=r"^no space left on the device writing .*checkpoint-00000002$"):
        save_checkpoint(tmp_path, 2, weights, {"state": {}, "param_groups": []}, {"step": 2})
    assert ckpt.find_latest_checkpoint(tmp_path) == first
    assert torch.equal(ckpt.load_trainable(first)["w"], weights["w"])
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # the half-written folder is gone


def test_disk_guard_maps_enospc_and_leaves_other_errors(tmp_path):
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {tmp_path}"):
        with disk_guard(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(RuntimeError, match="unrelated"):  # plenty of space: not a disk problem
        with disk_guard(tmp_path):
            raise RuntimeError("unrelated")


def test_atomic_folder_keeps_old_content_on_error(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("new")
            raise ValueError("boom")
    assert (final / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with atomic_folder(final) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


# -- row 8: a prediction file records what it answers ---------------------------------------------


def test_infer_refuses_a_file_written_for_other_data_model_or_settings(model_dir, tmp_path, capsys):
    from pixellm.infer.split_inference import meta_path

    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")

    def split(name, questions):
        rec = {"file_name": "a.png", "height": 30, "width": 40, "questions": questions,
               "answers": [[] for _ in questions]}
        path = tmp_path / name
        path.write_text(json.dumps([rec]))
        return path

    val, test = split("val.json", ["q1", "q2"]), split("test.json", ["other 1", "other 2", "other 3"])
    out = tmp_path / "pred.jsonl"

    def infer(data, model=model_dir, *extra):
        code = main(["infer", "--model", str(model), "--data", f"muse:{data}", "--out", str(out),
                     "--max-new-tokens", "6", "--device", "cpu", *extra])
        captured = capsys.readouterr()
        return code, captured.out, captured.err.strip().splitlines()

    assert infer(val)[0] == 0
    record = json.loads(meta_path(out).read_text())
    assert record["data"]["records"] == 1 and record["model"]["path"] == str(model_dir.resolve())
    code, _, err = infer(test)  # today: "2 already there", keeping val's lines
    assert code == 1 and len(err) == 1 and "holds predictions for other data" in err[0] and str(out) in err[0]
    other = copy_model(model_dir, tmp_path)
    save_random_predictor(other, answer=" a table [SEG]", seed=1)
    capsys.readouterr()
    code, _, err = infer(val, other)
    assert code == 1 and len(err) == 1 and "other model" in err[0]
    code, _, err = infer(val, model_dir, "--temperature", "0.7")
    assert code == 1 and len(err) == 1 and "other decoding settings" in err[0]
    code, printed, _ = infer(val)  # same data under another name, same model and settings: resumes
    assert code == 0 and "0 written, 2 already there" in printed
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)  # the same weights in another folder
    assert infer(val, moved)[0] == 0
    assert len(out.read_text().splitlines()) == 2
