"""Semantic segmentation class maps (ADE20K / COCO-Stuff style) -> multi-target MUSE records.

On disk: a folder of images, a folder of single-channel PNG label maps with the same file stems
(pixel value = class index), and a class-name list (text file, one name per line, or a JSON
list). Every class present in an image becomes one target (its mask = all its pixels); the
classes of an image are cut into groups of 1-3 and phrased like multi-referring questions
(supplement C.3: "the same conversion turns semantic-segmentation classes into multi-target
questions").
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pixellm.data.masks import encode_rle
from pixellm.data.prompts import multi_refer_answer, multi_refer_question
from pixellm.data.refer import group_targets
from pixellm.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or a JSON list of strings.

    A name with synonyms (``"building;edifice"`` or ``"person, individual"``) keeps its first
    synonym, so names never contain the list separators used in the questions.
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg} at line {err.lineno})", path=path) from err
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError("expected a JSON list of class-name strings", path=path)
    else:
        names = text.splitlines()
    out = []
    for i, name in enumerate(names):
        first = name.split(";")[0].split(",")[0].strip()
        if not first:
            raise DataError("empty class name", path=path, record=i + 1 if not path.endswith(".json") else i)
        out.append(first)
    return out


def find_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image, label map)`` pairs matched by file stem, in sorted order."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such folder")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = []
    for label in sorted(labels_dir.glob("*.png")):
        image = images.get(label.stem)
        if image is None:
            raise DataError(f"no image named {label.stem}.* in {images_dir}", path=str(label))
        pairs.append((image, label))
    if not pairs:
        raise DataError("no *.png label maps found", path=str(labels_dir))
    return pairs


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Single-channel label map as an integer array ``[H, W]``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"label map must be single-channel (mode P/L/I), got mode {im.mode}", path=str(path))
            return np.array(im, dtype=np.int64)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"unreadable label map ({err})", path=str(path)) from err


def semseg_to_muse(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    class_names: list[str],
    *,
    offset: int = 0,
    ignore: tuple[int, ...] = (255,),
    min_area: int = 1,
    min_targets: int = 1,
    max_targets: int = 3,
    seed: int = 0,
    image_prefix: str = "",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Convert a semantic-segmentation folder pair into MUSE records.

    Args:
        class_names: name of class index ``k`` at position ``k``.
        offset: label value ``v`` is class ``v - offset``; values below ``offset`` are
            background (ADE20K: ``offset=1``, value 0 = "other").
        ignore: label values that are never targets (COCO-Stuff / ADE "unlabelled": 255).
        min_area: classes with fewer pixels in an image are left out.
        image_prefix: prepended to the image file name in ``file_name``.
    """
    if not 1 <= min_targets <= max_targets:
        raise ConfigError(f"need 1 <= min_targets <= max_targets, got {min_targets}, {max_targets}")
    from PIL import Image

    records = []
    pairs = find_pairs(images_dir, labels_dir)
    for n, (image_path, label_path) in enumerate(tqdm(pairs, desc="semseg", disable=not progress)):
        label = read_label_map(label_path)
        try:
            with Image.open(image_path) as im:
                width, height = im.size
        except Exception as err:
            raise DataError(f"unreadable image ({err})", path=str(image_path)) from err
        if label.shape != (height, width):
            raise DataError(
                f"label map is {label.shape[1]}x{label.shape[0]} but the image is {width}x{height}",
                path=str(label_path),
            )
        anns: dict[int, dict[str, Any]] = {}
        values, counts = np.unique(label, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            k = value - offset
            if value in ignore or k < 0 or count < min_area:
                continue
            if k >= len(class_names):
                raise DataError(
                    f"label value {value} has no class name ({len(class_names)} names, offset {offset})",
                    path=str(label_path),
                )
            mask = label == value
            rle = encode_rle(mask)
            box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
            anns[k] = {
                "id": len(anns),
                "category_id": k,
                "category_name": class_names[k],
                "rephrased_name": class_names[k],
                "bbox": [float(v) for v in box],
                "area": int(count),
                "segmentation": rle,
            }
        rng = random.Random(f"{seed}:{image_path.name}")
        groups = group_targets({k: [a["category_name"]] for k, a in anns.items()}, rng, min_targets, max_targets, "random")
        questions, answers, texts = [], [], []
        for group in groups:
            names = [s for _, s in group]
            questions.append(multi_refer_question(names))
            answers.append([anns[k] for k, _ in group])
            texts.append(multi_refer_answer(names))
        records.append(
            {
                "id": n,
                "file_name": image_prefix + image_path.name,
                "height": height,
                "width": width,
                "ann_list": list(anns.values()),
                "questions": questions,
                "answers": answers,
                "text_answers": texts,
            }
        )
    return records
