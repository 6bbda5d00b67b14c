"""Referring segmentation (refCOCO / refCOCO+ / refCOCOg, refer format) -> MUSE records.

On disk (the ``refer`` API layout): ``ROOT/<dataset>/refs(<split_by>).p`` (a pickled list of
refs: ``ref_id, ann_id, image_id, split, sentences=[{sent, raw, ...}]``) and
``ROOT/<dataset>/instances.json`` (COCO ``images``, ``annotations``, ``categories``). The pickle
is untrusted and goes through ``unpickle.load_plain_pickle``.

Multi-referring conversion (supplement C.3): the referred objects of one image are shuffled and
cut into groups of 1-3 distinct targets; each group becomes the question
"Please segment the {a}, {b} and {c} in the image." with the answer
"{a} is {seg}, {b} is {seg} and {c} is {seg}." (answer order = question order).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixellm.data.muse import read_json
from pixellm.data.prompts import multi_refer_answer, multi_refer_question
from pixellm.data.unpickle import load_plain_pickle
from pixellm.errors import ConfigError, DataError

SENTENCE_MODES = ("random", "first", "all")


def refer_paths(root: str | os.PathLike, dataset: str, split_by: str) -> tuple[Path, Path]:
    """``(refs pickle, instances.json)`` under ``root/dataset`` (or ``root`` itself)."""
    root = Path(root)
    folder = root / dataset if (root / dataset).is_dir() else root
    refs, inst = folder / f"refs({split_by}).p", folder / "instances.json"
    for p in (refs, inst):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (expected the refer layout ROOT/{dataset}/...)")
    return refs, inst


def load_instances(path: str | os.PathLike) -> tuple[dict[int, dict], dict[int, dict], dict[int, str]]:
    """COCO ``instances.json`` -> ``(images by id, annotations by id, category names by id)``."""
    path = str(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a COCO object with 'images', 'annotations', 'categories'", path=path)
    out: list[dict[int, dict]] = []
    for key, fields in (
        ("images", ("id", "file_name", "height", "width")),
        ("annotations", ("id", "image_id", "category_id", "segmentation")),
        ("categories", ("id", "name")),
    ):
        items = data.get(key)
        if not isinstance(items, list):
            raise DataError(f"missing list '{key}'", path=path)
        table: dict[int, dict] = {}
        for i, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise DataError(f"{key}[{i}]: missing field '{missing[0]}'", path=path)
            table[int(item["id"])] = item
        out.append(table)
    images, anns, cats = out
    return images, anns, {cid: str(c["name"]) for cid, c in cats.items()}


def load_refs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The refs pickle, validated: each ref has ``ann_id``, ``image_id``, ``split``, ``sentences``."""
    path = str(path)
    refs = load_plain_pickle(path)
    if not isinstance(refs, list):
        raise DataError(f"expected a list of refs, got {type(refs).__name__}", path=path)
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise DataError("expected a dict", path=path, record=i)
        for key in ("ann_id", "image_id", "split", "sentences"):
            if key not in ref:
                raise DataError(f"missing field '{key}'", path=path, record=i)
        if not isinstance(ref["sentences"], list) or not ref["sentences"]:
            raise DataError("'sentences' must be a non-empty list", path=path, record=i)
        for s in ref["sentences"]:
            if not isinstance(s, dict) or not isinstance(s.get("sent", s.get("raw")), str):
                raise DataError("each sentence needs a 'sent' or 'raw' string", path=path, record=i)
    return refs


def clean_sentence(text: str) -> str:
    """Whitespace-normalised expression without a trailing full stop."""
    return " ".join(text.split()).rstrip(" .")


def refer_to_muse(
    root: str | os.PathLike,
    dataset: str = "refcoco",
    split_by: str = "unc",
    split: str = "val",
    *,
    min_targets: int = 1,
    max_targets: int = 3,
    sentences: str = "random",
    seed: int = 0,
    image_prefix: str = "",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Convert one refer split into MUSE image records with multi-referring questions.

    Args:
        min_targets / max_targets: size range of a target group (released: 1-3). A group is
            smaller than drawn only when an image runs out of objects or of distinct expressions.
        sentences: which expression of a target to use: ``random`` (seeded), ``first``, or
            ``all`` (one question per expression; only with ``max_targets=1``: the classic
            single-referring evaluation).
        seed: grouping / expression choice; every image gets its own stream, so results do not
            depend on the order of other images.
        image_prefix: prepended to each COCO ``file_name`` (e.g. ``train2014/``).
    """
    if sentences not in SENTENCE_MODES:
        raise ConfigError(f"sentences must be one of {SENTENCE_MODES}, got {sentences!r}")
    if not 1 <= min_targets <= max_targets:
        raise ConfigError(f"need 1 <= min_targets <= max_targets, got {min_targets}, {max_targets}")
    if sentences == "all" and max_targets != 1:
        raise ConfigError("sentences='all' needs max_targets=1")
    refs_path, inst_path = refer_paths(root, dataset, split_by)
    refs = load_refs(refs_path)
    images, anns, cats = load_instances(inst_path)

    # image id -> ann id -> expressions (refs of one object are merged), in file order
    per_image: dict[int, dict[int, list[str]]] = {}
    for i, ref in enumerate(refs):
        if str(ref["split"]) != split:
            continue
        ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
        if ann_id not in anns:
            raise DataError(f"ann_id {ann_id} not in {inst_path}", path=str(refs_path), record=i)
        if image_id not in images:
            raise DataError(f"image_id {image_id} not in {inst_path}", path=str(refs_path), record=i)
        sents = per_image.setdefault(image_id, {}).setdefault(ann_id, [])
        for s in ref["sentences"]:
            text = clean_sentence(s.get("sent", s.get("raw")))
            if text and text not in sents:
                sents.append(text)
    if not per_image:
        raise DataError(f"no refs with split '{split}'", path=str(refs_path))

    records = []
    items = tqdm(per_image.items(), desc=f"{dataset} {split}", disable=not progress)
    for image_id, targets in items:
        rng = random.Random(f"{seed}:{image_id}")
        groups = group_targets(targets, rng, min_targets, max_targets, sentences)
        records.append(_record(images[image_id], anns, cats, groups, image_prefix))
    return records


def group_targets(
    targets: dict[int, list[str]], rng: random.Random, lo: int, hi: int, mode: str
) -> list[list[tuple[int, str]]]:
    """Cut an image's objects into groups of distinct (ann id, expression) pairs."""
    if mode == "all":
        return [[(a, s)] for a, sents in targets.items() for s in sents]
    order = [a for a, sents in targets.items() if sents]
    rng.shuffle(order)
    groups: list[list[tuple[int, str]]] = []
    size = rng.randint(lo, hi)
    for ann_id in order:
        choices = list(targets[ann_id])
        if mode == "random":
            rng.shuffle(choices)
        if groups and len(groups[-1]) < size:
            used = {s for _, s in groups[-1]}
            fresh = [s for s in choices if s not in used]
            if fresh:  # two targets with the same expression would be ambiguous
                groups[-1].append((ann_id, fresh[0]))
                continue
        groups.append([(ann_id, choices[0])])
        size = rng.randint(lo, hi)
    return groups


def _record(
    image: dict, anns: dict[int, dict], cats: dict[int, str], groups: Iterable[list[tuple[int, str]]], prefix: str
) -> dict[str, Any]:
    ann_list, questions, answers, texts = [], [], [], []
    for group in groups:
        names = [s for _, s in group]
        targets = [_target(anns[a], cats, s) for a, s in group]
        ann_list.extend(targets)
        questions.append(multi_refer_question(names))
        answers.append(targets)
        texts.append(multi_refer_answer(names))
    return {
        "id": int(image["id"]),
        "file_name": prefix + str(image["file_name"]),
        "height": int(image["height"]),
        "width": int(image["width"]),
        "ann_list": ann_list,
        "questions": questions,
        "answers": answers,
        "text_answers": texts,
    }


def _target(ann: dict, cats: dict[int, str], sentence: str) -> dict[str, Any]:
    return {
        "id": int(ann["id"]),
        "category_id": int(ann["category_id"]),
        "category_name": cats.get(int(ann["category_id"]), "object"),
        "rephrased_name": sentence,
        "bbox": [float(v) for v in ann.get("bbox", [])],
        "segmentation": ann["segmentation"],
    }
