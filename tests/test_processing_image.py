"""Image preprocessing: resize rounding, normalisation values, zero padding, validity masks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixellm.errors import ConfigError, DataError, InputError
from pixellm.processing.image_processing import (
    RELEASED_MEAN,
    RELEASED_STD,
    PixelLMImageProcessor,
    grid_valid_mask,
    resized_size,
)

A = (200, 100, 50)
B = (10, 220, 130)


def two_colour_image() -> np.ndarray:
    """4 x 8 image: left half colour A, right half colour B."""
    img = np.zeros((4, 8, 3), np.uint8)
    img[:, :4] = A
    img[:, 4:] = B
    return img


def norm(rgb) -> np.ndarray:
    return (np.asarray(rgb, np.float32) - np.asarray(RELEASED_MEAN, np.float32)) / np.asarray(RELEASED_STD, np.float32)


@pytest.mark.parametrize(
    "hw, size, expected",
    [((4, 8), 16, (8, 16)), ((5, 7), 8, (6, 8)), ((7, 5), 8, (8, 6)), ((1, 100), 448, (4, 448)),
     ((480, 640), 448, (336, 448)), ((448, 448), 448, (448, 448))],
)
def test_resized_size_rounding(hw, size, expected):
    assert resized_size(*hw, size) == expected


def test_known_image_resize_normalise_pad():
    proc = PixelLMImageProcessor(image_size=16, patch_size=4)
    out = proc([two_colour_image()])
    pv = out["pixel_values"]
    assert pv.shape == (1, 3, 16, 16) and pv.dtype == torch.float32
    assert out["resized_sizes"].tolist() == [[8, 16]]
    assert out["original_sizes"].tolist() == [[4, 8]]
    # Far from the colour edge the bilinear upscale keeps the colour exactly.
    np.testing.assert_allclose(pv[0, :, 0, 0].numpy(), norm(A), rtol=0, atol=1e-5)
    np.testing.assert_allclose(pv[0, :, 7, 15].numpy(), norm(B), rtol=0, atol=1e-5)
    assert torch.all(pv[0, :, 8:, :] == 0)  # padded rows are exactly zero
    assert torch.all(pv[0, :, :8, :] != 0)


def test_no_resize_when_already_at_size_matches_manual_normalisation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    pv = PixelLMImageProcessor(image_size=8, patch_size=4)(img)["pixel_values"][0]
    expected = norm(img.reshape(-1, 3)).reshape(6, 8, 3).transpose(2, 0, 1)
    np.testing.assert_allclose(pv[:, :6].numpy(), expected, atol=1e-5)
    assert torch.all(pv[:, 6:] == 0)


def test_input_kinds_agree(tmp_path):
    img = two_colour_image()
    path = tmp_path / "im.png"
    Image.fromarray(img).save(path)
    proc = PixelLMImageProcessor(image_size=16, patch_size=4)
    ref = proc(img)["pixel_values"]
    for other in (str(path), path, Image.fromarray(img), Image.fromarray(img).convert("RGBA"),
                  np.dstack([img, np.full((4, 8, 1), 255, np.uint8)])):
        assert torch.equal(proc(other)["pixel_values"], ref)
    gray = proc(np.full((4, 8), 77, np.uint8))["pixel_values"]
    np.testing.assert_allclose(gray[0, :, 0, 0].numpy(), norm((77, 77, 77)), atol=1e-5)


def test_batch_of_different_sizes():
    proc = PixelLMImageProcessor(image_size=16, patch_size=4)
    out = proc([np.zeros((4, 8, 3), np.uint8), np.zeros((10, 3, 3), np.uint8)])
    assert out["pixel_values"].shape == (2, 3, 16, 16)
    assert out["resized_sizes"].tolist() == [[8, 16], [16, 5]]
    assert out["original_sizes"].tolist() == [[4, 8], [10, 3]]


def test_patch_mask_wide_and_tall():
    proc = PixelLMImageProcessor(image_size=16, patch_size=4)  # 4 x 4 patch grid
    mask = grid_valid_mask(torch.tensor([[8, 16], [16, 5]]), proc.image_size, proc.patch_grid)
    assert mask.shape == (2, 4, 4) and mask.dtype == torch.bool
    wide = torch.zeros(4, 4, dtype=torch.bool)
    wide[:2, :] = True  # rows 0,1 cover y < 8
    tall = torch.zeros(4, 4, dtype=torch.bool)
    tall[:, :2] = True  # cols 0 (x 0-3) and 1 (x 4-7, partly real) are valid
    assert torch.equal(mask[0], wide) and torch.equal(mask[1], tall)


def test_grid_valid_mask_boundaries():
    # S=448, G=16: cell c starts at 28c; w'=29 -> cells 0 and 1 (28 < 29), w'=28 -> only cell 0.
    assert grid_valid_mask(torch.tensor([448, 29]), 448, 16)[0].sum().item() == 2
    assert grid_valid_mask(torch.tensor([448, 28]), 448, 16)[0].sum().item() == 1


def test_errors_name_the_problem(tmp_path):
    proc = PixelLMImageProcessor(image_size=16, patch_size=4)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        proc(str(bad))
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 3).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DataError, match="cut.png"):
        proc(str(truncated))
    with pytest.raises(DataError, match="missing.png"):
        proc(str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="uint8"):
        proc(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        proc(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="empty"):
        proc(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InputError, match="unsupported"):
        proc(42)
    with pytest.raises(ConfigError):
        PixelLMImageProcessor(image_size=15, patch_size=4)


def test_save_load_round_trip(tmp_path):
    proc = PixelLMImageProcessor(image_size=32, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), patch_size=8)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = PixelLMImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == proc.to_dict()
    img = two_colour_image()
    assert torch.equal(loaded(img)["pixel_values"], proc(img)["pixel_values"])
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        PixelLMImageProcessor.from_pretrained(tmp_path)
