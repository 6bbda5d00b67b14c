"""Image preprocessing of the released model: resize the longest side, normalise, zero-pad.

Steps (docs/architecture.md, "Model, as released"): RGB; resize so the longest side is ``image_size`` with PIL bilinear and
``new = int(scale * old + 0.5)`` (SAM's ``ResizeLongestSide``); normalise on the 0-255 scale with
the released mean/std; zero-pad bottom/right to ``image_size x image_size`` (after normalising,
so the padding is 0 in normalised space). Grid-validity masks say which patches / LLM image cells
cover real pixels.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pixellm.conventions import grid_valid_mask  # noqa: F401  (re-exported: the old import path)
from pixellm.errors import ConfigError, DataError, InputError

logger = logging.getLogger(__name__)

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
RELEASED_MEAN = (123.675, 116.28, 103.53)
RELEASED_STD = (58.395, 57.12, 57.375)

ImageInput = str | os.PathLike | Image.Image | np.ndarray


DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
MAX_PIXELS_ENV = "PIXELLM_MAX_IMAGE_PIXELS"


class ImageNotFound(DataError):
    """The image file does not exist."""


class ImageTooLarge(DataError):
    """The image has more pixels than the limit (:func:`max_image_pixels`)."""


def max_image_pixels() -> int:
    """The one pixel limit of every command (train, predict, chat, infer, serve).

    ``PIXELLM_MAX_IMAGE_PIXELS`` in the environment (so DataLoader workers see it too; the
    commands' ``--max-image-pixels`` sets it), else 40,000,000. Checked from the file header,
    before anything is decoded, so a decompression bomb costs nothing.
    """
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError as err:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from err
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} must be at least 1")
    return value


def set_max_image_pixels(pixels: int | None) -> None:
    """Set the shared pixel limit for this process and its children (``None``: keep as is)."""
    if pixels is None:
        return
    if int(pixels) < 1:
        raise ConfigError(f"the pixel limit must be at least 1, got {pixels}")
    os.environ[MAX_PIXELS_ENV] = str(int(pixels))


def _check_pixels(width: int, height: int, limit: int, where: str | None) -> None:
    if width * height > limit:
        raise ImageTooLarge(
            f"image is too large ({width}x{height} = {width * height:,} pixels; the limit is {limit:,}, "
            f"set with --max-image-pixels or {MAX_PIXELS_ENV})",
            path=where,
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB with the same look.

    PIL's ``convert("RGB")`` clips 16/32-bit integer images ("I;16*", "I") at 255, so a
    16-bit PNG turns white: those are scaled to 8 bits instead (65535 -> 255). Alpha is dropped
    (as OpenCV's ``imread`` does for the released model); palettes, CMYK, 1-bit and grey
    images go through PIL's conversions.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return img.convert("RGB")


def load_image(image: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """Path, PIL image or ``HxWx3`` (also ``HxW`` / ``HxWx4``) uint8 array -> RGB PIL image.

    The one image loader of training, prediction, inference and the web demo: the pixel limit
    (``max_pixels``, default :func:`max_image_pixels`) is checked from the header before
    decoding, every mode is converted by :func:`to_rgb`, and the EXIF orientation of a file is
    applied. Errors are ``DataError`` naming the file (``ImageNotFound``, ``ImageTooLarge``).
    """
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = str(image)
        if not os.path.isfile(path):
            raise ImageNotFound("image file not found", path=path)
        # PIL refuses images over 2x its own limit inside open(), before we can look: raise its
        # limit to ours when ours is higher, so that a configured higher limit really applies.
        Image.MAX_IMAGE_PIXELS = max(limit, Image.MAX_IMAGE_PIXELS or 0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    _check_pixels(img.width, img.height, limit, path)
                    img.load()  # decode now so a truncated file fails here, naming the file
                    return to_rgb(ImageOps.exif_transpose(img))
        except DataError:
            raise
        except Image.DecompressionBombError as err:  # over 2x PIL's limit: refused inside open()
            found = re.search(r"\((\d+) pixels\)", str(err))
            size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise ImageTooLarge(f"image is too large ({size}; the limit is {limit:,}, set with "
                                f"--max-image-pixels or {MAX_PIXELS_ENV})", path=path) from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise DataError(f"cannot read image ({type(err).__name__}: {err})", path=path) from err
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, limit, None)
        if image.width == 0 or image.height == 0:
            raise InputError(f"image is empty: {image.width}x{image.height}")
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"image array must be uint8 (0-255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise InputError(f"image array must be HxWx3 (or HxW, HxWx4), got shape {tuple(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"image array is empty: shape {tuple(image.shape)}")
        _check_pixels(image.shape[1], image.shape[0], limit, None)
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise InputError(f"unsupported image type {type(image).__name__}; pass a path, PIL image or uint8 array")


def resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``image_size`` (SAM's rounding).

    Each side is at least 1 pixel: a very thin image (1x4000) would otherwise round to 0.
    """
    scale = image_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def read_config_json(path: Path) -> dict[str, Any]:
    """A processor config file as a dict; ``ConfigError`` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


class PixelLMImageProcessor:
    """Resize-longest-side + normalise + pad, saved as ``preprocessor_config.json``.

    Args:
        image_size: side S of the square model input (448 released, 64 for ``tiny``).
        mean, std: per-channel statistics on the 0-255 scale (released values by default).
        patch_size: vision patch size, for the CLIP patch grid (``patch_grid``; 14 released).
    """

    def __init__(
        self,
        image_size: int = 448,
        mean: Sequence[float] = RELEASED_MEAN,
        std: Sequence[float] = RELEASED_STD,
        patch_size: int = 14,
    ):
        if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
            raise ConfigError(f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean/std must be 3 values with std > 0, got mean={mean} std={std}")
        self.image_size = int(image_size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.patch_size = int(patch_size)

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch_size

    def preprocess_one(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """One image -> (pixel_values Float ``[3, S, S]``, (h', w'), (H, W))."""
        pil = load_image(image)
        width, height = pil.size
        new_h, new_w = resized_size(height, width, self.image_size)
        if (new_h, new_w) != (height, width):
            pil = pil.resize((new_w, new_h), Image.BILINEAR)
        arr = np.asarray(pil, dtype=np.float32)  # [h', w', 3], 0-255
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        out = torch.zeros(3, self.image_size, self.image_size, dtype=torch.float32)
        out[:, :new_h, :new_w] = torch.from_numpy(arr).permute(2, 0, 1)
        return out, (new_h, new_w), (height, width)

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> dict[str, torch.Tensor]:
        """Images -> ``pixel_values`` [B,3,S,S], ``resized_sizes`` [B,2], ``original_sizes`` [B,2]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InputError("no images given")
        pixels, resized, original = zip(*(self.preprocess_one(im) for im in images))
        return {
            "pixel_values": torch.stack(pixels),
            "resized_sizes": torch.tensor(resized, dtype=torch.long),
            "original_sizes": torch.tensor(original, dtype=torch.long),
        }

    # --- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "patch_size": self.patch_size,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = Path(save_directory) / IMAGE_PROCESSOR_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return str(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> PixelLMImageProcessor:
        known = {"image_size", "mean", "std", "patch_size"}
        unknown = set(data) - known - {"image_processor_type", "processor_class"}
        if unknown:
            logger.warning("%s: ignoring unknown image processor fields %s", source, sorted(unknown))
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: invalid image processor config ({err})") from err

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PixelLMImageProcessor:
        path = Path(directory) / IMAGE_PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no image processor config")
        return cls.from_dict(read_config_json(path), source=str(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"
