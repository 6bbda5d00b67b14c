"""The shared image loader and what train / predict / infer do with bad images (issue 12 rows 3, 4, 6, 7, 14)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pixellm.cli import main
from pixellm.data.dataset import SegmentationDataset, _Skip
from pixellm.data.muse import iter_questions, muse_samples
from pixellm.errors import DataError
from pixellm.processing.image_processing import (
    MAX_PIXELS_ENV,
    ImageTooLarge,
    PixelLMImageProcessor,
    load_image,
    resized_size,
)
from pixellm.testing import save_random_predictor


def bomb_png(path, width=14000, height=14000):
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_random_predictor(d, answer=" the chair [SEG]")
    return d


def rgb_png(path, h=30, w=40, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# -- row 4: decompression bombs and the shared, configurable pixel limit ---------------------------


def test_bomb_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLarge, match=r"bomb.png: image is too large \(196,000,000 pixels; the limit is 40,000,000"):
        load_image(bomb)
    # also above PIL's own 2x limit: our check decides, with our message (no DecompressionBombError)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(10**9))
    bomb2 = bomb_png(tmp_path / "bomb2.png", 40000, 40000)
    with pytest.raises(ImageTooLarge, match="1,600,000,000 pixels; the limit is 1,000,000,000"):
        load_image(bomb2)


def test_pixel_limit_is_configurable_and_shared(tmp_path, monkeypatch, model_dir, capsys):
    img = rgb_png(tmp_path / "small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageTooLarge, match="the limit is 1,000"):
        load_image(img)
    with pytest.raises(ImageTooLarge):
        load_image(np.zeros((30, 40, 3), np.uint8))
    # the training loader uses the same limit: a counted skip
    rec = {"file_name": "small.png", "height": 30, "width": 40, "questions": ["q"], "answers": [[]]}
    (tmp_path / "gt.json").write_text(json.dumps([rec]))
    samples, _ = muse_samples(tmp_path / "gt.json")
    with pytest.raises(_Skip) as skip:
        SegmentationDataset.load(samples[0])
    assert skip.value.reason == "image_too_large"
    monkeypatch.delenv(MAX_PIXELS_ENV)
    code = main(["predict", "--model", str(model_dir), "--image", str(img), "--question", "q",
                 "--device", "cpu", "--max-new-tokens", "4", "--max-image-pixels", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "too large" in err[0] and "small.png" in err[0]


# -- rows 3 + 4 + 7: infer skips and counts, also in batches of one -------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_infer_skips_bad_questions_and_goes_on(model_dir, tmp_path, capsys, batch_size, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    rgb_png(data / "a.png")
    bomb_png(data / "bomb.png")
    (data / "corrupt.png").write_bytes(b"\x89PNG not really")
    rgb_png(tmp_path / "outside.png")  # exists, but outside the data root
    names = ["a.png", "bomb.png", "a.png", "corrupt.png", "../outside.png", str(tmp_path / "outside.png"), "a.png"]
    records = [{"file_name": n, "height": 30, "width": 40, "questions": ["q"], "answers": [[]]} for n in names]
    gt = data / "gt.json"
    gt.write_text(json.dumps(records))
    out = tmp_path / "pred.jsonl"
    args = ["infer", "--model", str(model_dir), "--data", f"muse:{gt}", "--out", str(out),
            "--batch-size", str(batch_size), "--max-new-tokens", "6", "--device", "cpu"]
    code = main(args)
    printed = capsys.readouterr().out
    assert code == 1  # some questions failed: reported in the exit status and the summary
    assert "3 written, 0 already there, 4 failed, 7 questions" in printed
    assert [json.loads(x)["image"] for x in out.read_text().splitlines()] == [0, 2, 6]
    assert main([*args, "--allow-outside-root"]) == 1
    assert "2 written, 3 already there, 2 failed" in capsys.readouterr().out


# -- row 7: names outside the root in training ---------------------------------------------------


def test_training_refuses_names_outside_the_root(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    rgb_png(data / "a.png")
    rgb_png(tmp_path / "secret.png")
    names = ["a.png", "../secret.png", str(tmp_path / "secret.png"), "sub/../a.png"]
    records = [{"file_name": n, "height": 30, "width": 40, "questions": ["q", "r"], "answers": [[], []]}
               for n in names]
    (data / "gt.json").write_text(json.dumps(records))
    samples, skipped = muse_samples(data / "gt.json")
    assert [s.meta["record"] for s in samples] == [0, 0, 3, 3]
    assert skipped["unsafe_path"] == 4
    assert "record 1" in caplog.text and "record 2" in caplog.text
    allowed, skipped = muse_samples(data / "gt.json", allow_outside_root=True)
    assert len(allowed) == 8 and not skipped["unsafe_path"]
    qs = list(iter_questions(records, data))
    assert qs[2].image_path is None and "outside the image root" in qs[2].image_error


# -- row 6: image modes and EXIF orientation ------------------------------------------------------


def save_and_load(img, path, **kw):
    img.save(path, **kw)
    return np.asarray(load_image(path))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    out = save_and_load(Image.fromarray(ramp), tmp_path / "g16.png")
    assert out.shape == (30, 40, 3)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)  # today: all 255 past the first row
    assert (out[..., 0] == out[..., 2]).all() and out.min() == 0 and out.max() > 200


def test_i16_and_i_modes_in_memory():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    for img in (Image.fromarray(ramp), Image.fromarray(ramp.astype(np.int32))):
        assert img.mode in ("I;16", "I")
        out = np.asarray(load_image(img))
        np.testing.assert_array_equal(out[..., 1], np.rint(ramp / 257.0).astype(np.uint8))


def test_palette_la_cmyk_modes(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(save_and_load(pal, tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    np.testing.assert_array_equal(save_and_load(pal, tmp_path / "pt.png"), np.asarray(pal.convert("RGB")))
    grey = rgb[..., 0]
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 7)]), mode="LA")
    out = save_and_load(la, tmp_path / "la.png")
    assert (out == grey[..., None]).all()  # alpha dropped, grey kept
    cmyk = Image.new("CMYK", (5, 4), (255, 0, 0, 0))  # pure cyan
    assert (save_and_load(cmyk, tmp_path / "c.jpg", quality=100) == (0, 255, 255)).all(axis=-1).mean() > 0.9


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # left quarter white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotates 90 degrees clockwise
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = np.asarray(load_image(tmp_path / "r.jpg"))
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the white band is now on top


# -- row 14: very thin images ---------------------------------------------------------------------


def test_thin_image_is_handled(model_dir):
    from pixellm.infer.predictor import Predictor

    assert resized_size(1, 4000, 448) == (1, 448) and resized_size(4000, 1, 64) == (64, 1)
    proc = PixelLMImageProcessor(image_size=64, patch_size=8)
    out = proc(np.zeros((1, 4000, 3), np.uint8))
    assert out["resized_sizes"].tolist() == [[1, 64]]
    result = Predictor.from_pretrained(model_dir, device="cpu")(np.zeros((1, 4000, 3), np.uint8), "q")
    assert result.masks.shape[1:] == (1, 4000)


def test_not_an_image_still_names_the_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="x.png: cannot read image"):
        load_image(bad)
