"""Image preprocessing of the released model: resize the longest side, normalise, zero-pad.

Steps (SPEC section 2): RGB; resize so the longest side is ``image_size`` with PIL bilinear and
``new = int(scale * old + 0.5)`` (SAM's ``ResizeLongestSide``); normalise on the 0-255 scale with
the released mean/std; zero-pad bottom/right to ``image_size x image_size`` (after normalising,
so the padding is 0 in normalised space). Grid-validity masks say which patches / LLM image cells
cover real pixels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pixellm.errors import ConfigError, DataError, InputError

logger = logging.getLogger(__name__)

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
RELEASED_MEAN = (123.675, 116.28, 103.53)
RELEASED_STD = (58.395, 57.12, 57.375)

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def load_image(image: ImageInput) -> Image.Image:
    """Path, PIL image or ``HxWx3`` (also ``HxW`` / ``HxWx4``) uint8 array -> RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        path = str(image)
        if not os.path.isfile(path):
            raise DataError("image file not found", path=path)
        try:
            with Image.open(path) as img:
                img.load()  # decode now so a truncated file fails here, naming the file
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"cannot read image ({type(err).__name__}: {err})", path=path) from err
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"image array must be uint8 (0-255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise InputError(f"image array must be HxWx3 (or HxW, HxWx4), got shape {tuple(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"image array is empty: shape {tuple(image.shape)}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise InputError(f"unsupported image type {type(image).__name__}; pass a path, PIL image or uint8 array")


def resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``image_size`` (SAM's rounding)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def grid_valid_mask(resized_sizes: torch.Tensor, image_size: int, grid: int) -> torch.Tensor:
    """Which cells of a ``grid x grid`` partition of the padded ``S x S`` input cover real pixels.

    Cell (r, c) is valid iff ``r*S/G < h'`` and ``c*S/G < w'`` (computed as ``r*S < h'*G`` in
    integers). With ``G = S / patch`` this is CLIP's patch mask; with the LLM grid, the image-token mask.

    Args:
        resized_sizes: Long ``[B, 2]`` (h', w') or ``[2]``.
    Returns:
        Bool ``[B, G, G]`` (or ``[G, G]`` for a single size).
    """
    sizes = torch.as_tensor(resized_sizes, dtype=torch.long)
    single = sizes.ndim == 1
    sizes = sizes.reshape(-1, 2)
    starts = torch.arange(grid, dtype=torch.long, device=sizes.device) * image_size  # r*S vs h'*G
    rows = starts[None, :] < (sizes[:, 0:1] * grid)  # [B, G]
    cols = starts[None, :] < (sizes[:, 1:2] * grid)  # [B, G]
    valid = rows[:, :, None] & cols[:, None, :]
    return valid[0] if single else valid


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
        patch_size: vision patch size, for :meth:`patch_attention_mask` (14 released).
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

    def patch_attention_mask(self, resized_sizes: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, S/p, S/p]``: CLIP patches that cover real pixels (14r < h' and 14c < w')."""
        return grid_valid_mask(resized_sizes, self.image_size, self.patch_grid)

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
