"""Synthetic multi-target reasoning set: coloured shapes, questions that need the image.

Scenes (``size`` x ``size`` px, default 64): 2-6 shapes (circle / square / triangle, 5 colours,
7-23 px), each colour+shape at most once, drawn in order so later shapes occlude earlier ones;
at least half of every shape stays visible, and shapes of the same colour never touch, so each
visible region is recoverable from the pixels. Masks are the *visible* pixels.

Question kinds (``KIND_WEIGHTS``): plain multi-referring (1-3 targets), absent objects (no
target), same colour / same shape as a reference, extreme position / size, spatial relations,
"all the circles" / "every red shape" (0-5), all shapes (2-6), "every shape that is not red".
Answers name each target followed by ``{seg}`` ("The red circle {seg} and the blue square
{seg}."); no-target answers have no ``{seg}``. Multi-target reasoning answers list their targets
in a fixed order (``SynthConfig.answer_order``): by category (colour, then shape, in the order of
``COLOURS`` and ``SHAPES``; the default) or left to right. Plain referring answers follow the
question's order.

Written in the MUSE format (``<split>.json`` + ``images/<split>/*.png``); each split draws from
its own seed and no image appears twice across splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixellm.data.masks import encode_rle
from pixellm.data.prompts import INSTRUCTIONS, join_words
from pixellm.data.sample import SEG_PLACEHOLDER
from pixellm.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (24, 24, 24)

# Question / answer templates. The generator and ``tokenizer_corpus`` both use them.
T = {
    "refer": "Please segment the {names} in the image.",
    "absent": "There is no {name} in the image.",
    "same_colour": "Which shapes have the same colour as the {ref}?",
    "same_colour_none": "There is no other shape with the same colour as the {ref}.",
    "same_shape": "Which shapes have the same shape as the {ref}?",
    "same_shape_none": "There is no other {shape} in the image.",
    "extreme": "Please segment the {extreme} shape.",
    "relation": "Which shapes are {relation} the {ref}?",
    "relation_none": "There is no shape {relation} the {ref}.",
    "every_shape": "Please segment all the {shape}s.",
    "every_shape_none": "There is no {shape} in the image.",
    "every_colour": "Please segment every {colour} shape.",
    "every_colour_none": "There is no {colour} shape in the image.",
    "all": "Please segment all the shapes.",
    "except_colour": "Please segment every shape that is not {colour}.",
    "except_colour_none": "Every shape is {colour}.",
    "except_shape": "Please segment every shape that is not a {shape}.",
    "except_shape_none": "Every shape is a {shape}.",
}
POSITIONS = ("leftmost", "rightmost", "topmost", "bottommost")
SIZES = ("largest", "smallest")
RELATIONS = ("left of", "right of", "above", "below")

KIND_WEIGHTS: dict[str, float] = {
    "refer": 0.30,
    "absent": 0.07,
    "same_colour": 0.08,
    "same_shape": 0.05,
    "position": 0.10,
    "size": 0.05,
    "relation": 0.10,
    "every": 0.14,
    "all": 0.05,
    "except": 0.06,
}
# Every kind but plain referring, in the same proportions: a text-only training split
# (``pixellm data synth --train-text``), questions for the language side whose answers need the
# image read (docs/demo-rounds.md, eleventh round).
REASONING_KIND_WEIGHTS: dict[str, float] = {k: w for k, w in KIND_WEIGHTS.items() if k != "refer"}
ANSWER_ORDERS = ("category", "left_to_right")
POSITION_MARGIN = 3.0  # px between centroids so that "leftmost" / "left of" are unambiguous
SIZE_RATIO = 1.3  # largest visible area / second largest (and likewise for smallest)


@dataclass(frozen=True)
class SynthConfig:
    """Scene and question parameters (defaults: the demo's set)."""

    size: int = 64
    min_shapes: int = 2
    max_shapes: int = 6
    min_extent: int = 7
    max_extent: int = 23
    questions_per_image: int = 2
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    # "category": a small model lists a fixed sequence of the names present (docs/data.md);
    # "left_to_right" needs the targets' positions compared while writing the list.
    answer_order: str = "category"

    @classmethod
    def for_size(cls, size: int, **kwargs: Any) -> SynthConfig:
        """Config for ``size`` px images, shape extents scaled from the 64 px defaults (7-23)."""
        lo, hi = max(3, round(7 * size / 64)), max(3, round(23 * size / 64))
        return cls(size=size, min_extent=lo, max_extent=hi, **kwargs)

    def __post_init__(self) -> None:
        if not 1 <= self.min_shapes <= self.max_shapes <= len(COLOURS) * len(SHAPES):
            raise ConfigError(f"need 1 <= min_shapes <= max_shapes <= 15, got {self.min_shapes}, {self.max_shapes}")
        if not 3 <= self.min_extent <= self.max_extent < self.size:
            raise ConfigError(f"need 3 <= min_extent <= max_extent < size, got {self.min_extent}, {self.max_extent}")
        if self.questions_per_image < 1:
            raise ConfigError("questions_per_image must be >= 1")
        unknown = set(self.kind_weights) - set(KIND_WEIGHTS)
        if unknown or not any(w > 0 for w in self.kind_weights.values()):
            raise ConfigError(f"kind_weights: unknown kinds {sorted(unknown)} or no positive weight")
        if self.answer_order not in ANSWER_ORDERS:
            raise ConfigError(f"answer_order: {self.answer_order!r}; choose one of {list(ANSWER_ORDERS)}")


@dataclass
class Shape:
    """One drawn shape; ``mask`` = its visible pixels ``[H, W]``, ``full_area`` incl. hidden."""

    colour: str
    kind: str
    extent: int
    mask: np.ndarray
    full_area: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)`` of the visible pixels (pixel centres)."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8
    shapes: list[Shape]  # in drawing order


@dataclass
class SynthQuestion:
    kind: str
    question: str
    targets: list[int]  # indices into Scene.shapes, answer order
    answer: str
    ordered: bool = False  # a multi-target list that ``answer_order`` sorts (not a referring answer)


# ----------------------------------------------------------------------------- scenes


def _raster(kind: str, cx: float, cy: float, s: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Pixel-exact (no anti-aliasing) shape of bounding extent ``s`` centred at ``(cx, cy)``."""
    h = s / 2.0
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= h * h
    if kind == "square":
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    top = cy - h  # upward isosceles triangle: apex at the top, base at the bottom
    return (yy >= top) & (yy <= cy + h) & (np.abs(xx - cx) <= (yy - top) / 2.0)


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one pixel in all 8 directions (a 3 x 3 square, nothing beyond the
    border): the same as ``scipy.ndimage.binary_dilation`` with ``np.ones((3, 3))``, as two
    1-D passes, ~10x faster on these small canvases (it was a quarter of writing the demo set)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def generate_scene(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> Scene:
    """Place shapes one by one, re-drawing any that would break the visibility rules."""
    size, pad = cfg.size, cfg.max_extent
    coords = np.arange(-pad, size + pad) + 0.5  # pixel centres of a padded canvas
    xx, yy = np.meshgrid(coords, coords)
    inner = (slice(pad, pad + size), slice(pad, pad + size))
    combos = [(c, k) for c in COLOURS for k in SHAPES]
    for _ in range(200):
        n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
        chosen = [combos[i] for i in rng.choice(len(combos), n, replace=False)]
        grown: list[np.ndarray] = []  # full masks dilated by one pixel (padded canvas)
        shapes: list[Shape] = []
        for colour, kind in chosen:
            for _try in range(60):
                s = int(rng.integers(cfg.min_extent, cfg.max_extent + 1))
                cx, cy = rng.uniform(-s / 4, size + s / 4, size=2)
                full = _raster(kind, cx, cy, s, xx, yy)
                full_area = int(full.sum())
                visible = full[inner]
                if visible.sum() * 2 < full_area:
                    continue  # mostly outside the image
                # same-colour shapes must not touch, or their border would be invisible
                if any(p.colour == colour and (g & full).any() for p, g in zip(shapes, grown)):
                    continue
                if any((p.mask & ~visible).sum() * 2 < p.full_area for p in shapes):
                    continue  # would hide more than half of an earlier shape
                for p in shapes:
                    p.mask = p.mask & ~visible
                shapes.append(Shape(colour, kind, s, visible, full_area))
                grown.append(_grow(full))
                break
            else:
                break  # this shape found no place: start the scene again
        if len(shapes) == n:
            image = np.empty((size, size, 3), np.uint8)
            image[:] = BACKGROUND
            for p in shapes:
                image[p.mask] = COLOURS[p.colour]
            return Scene(image, shapes)
    raise RuntimeError("could not place the shapes; lower max_shapes or max_extent")


# -------------------------------------------------------------------------- questions


def _answer(names: list[str]) -> str:
    text = join_words([f"the {n} {SEG_PLACEHOLDER}" for n in names]) + "."
    return text[0].upper() + text[1:]


def _ref(scene: Scene, i: int) -> str:
    """Shortest unique description of shape ``i``: its kind if no other shape has it."""
    p = scene.shapes[i]
    return p.kind if sum(q.kind == p.kind for q in scene.shapes) == 1 else p.name


def _category_rank(shape: Shape) -> int:
    return list(COLOURS).index(shape.colour) * len(SHAPES) + SHAPES.index(shape.kind)


def order_targets(scene: Scene, idx: list[int], order: str) -> list[int]:
    """``idx`` in the answer order ``order`` (``ANSWER_ORDERS``)."""
    if order == "category":
        return sorted(idx, key=lambda i: _category_rank(scene.shapes[i]))
    return sorted(idx, key=lambda i: scene.shapes[i].centroid)


def _targets(scene: Scene, kind: str, question: str, idx: list[int], none: str) -> SynthQuestion:
    """A multi-target question; ``scene_questions`` orders its targets and writes the answer."""
    return SynthQuestion(kind, question, list(idx), none, ordered=True)


def _q_refer(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    k = int(rng.integers(1, min(3, len(scene.shapes)) + 1))
    idx = [int(i) for i in rng.choice(len(scene.shapes), k, replace=False)]
    names = [scene.shapes[i].name for i in idx]
    return SynthQuestion("refer", T["refer"].format(names=join_words(names)), idx, _answer(names))


def _q_absent(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    present = {p.name for p in scene.shapes}
    absent = [f"{c} {k}" for c in COLOURS for k in SHAPES if f"{c} {k}" not in present]
    if not absent:
        return None
    name = absent[int(rng.integers(len(absent)))]
    return SynthQuestion("absent", T["refer"].format(names=name), [], T["absent"].format(name=name))


def _pick_reference(scene: Scene, rng: np.random.Generator, attr: str) -> int:
    """A shape index; 3 times in 4 one whose ``attr`` another shape shares (fewer empty answers)."""
    values = [getattr(p, attr) for p in scene.shapes]
    shared = [i for i, v in enumerate(values) if values.count(v) > 1]
    pool = shared if shared and rng.random() < 0.75 else list(range(len(values)))
    return pool[int(rng.integers(len(pool)))]


def _q_same_colour(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    r = _pick_reference(scene, rng, "colour")
    ref, colour = _ref(scene, r), scene.shapes[r].colour
    idx = [i for i, p in enumerate(scene.shapes) if i != r and p.colour == colour]
    return _targets(scene, "same_colour", T["same_colour"].format(ref=ref), idx, T["same_colour_none"].format(ref=ref))


def _q_same_shape(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    r = _pick_reference(scene, rng, "kind")
    ref, kind = scene.shapes[r].name, scene.shapes[r].kind
    idx = [i for i, p in enumerate(scene.shapes) if i != r and p.kind == kind]
    return _targets(scene, "same_shape", T["same_shape"].format(ref=ref), idx, T["same_shape_none"].format(shape=kind))


def _extreme(values: list[float], margin: float, ratio: bool) -> int | None:
    """Index of the largest value if it beats the runner-up by ``margin`` (a factor if ``ratio``)."""
    if len(values) < 2:
        return 0
    order = np.argsort(values)[::-1]
    best, second = values[order[0]], values[order[1]]
    ok = best >= second * margin if ratio else best - second >= margin
    return int(order[0]) if ok else None


def _q_position(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    word = POSITIONS[int(rng.integers(len(POSITIONS)))]
    axis, sign = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "bottommost": (1, 1)}[word]
    i = _extreme([sign * p.centroid[axis] for p in scene.shapes], POSITION_MARGIN, ratio=False)
    if i is None:
        return None
    return SynthQuestion("position", T["extreme"].format(extreme=word), [i], _answer([scene.shapes[i].name]))


def _q_size(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    word = SIZES[int(rng.integers(len(SIZES)))]
    areas = [float(p.area) for p in scene.shapes]
    i = _extreme(areas if word == "largest" else [1.0 / a for a in areas], SIZE_RATIO, ratio=True)
    if i is None:
        return None
    return SynthQuestion("size", T["extreme"].format(extreme=word), [i], _answer([scene.shapes[i].name]))


def _q_relation(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    r = int(rng.integers(len(scene.shapes)))
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[relation]
    ref_pos = scene.shapes[r].centroid[axis]
    deltas = {i: sign * (p.centroid[axis] - ref_pos) for i, p in enumerate(scene.shapes) if i != r}
    if any(abs(d) < POSITION_MARGIN for d in deltas.values()):
        return None  # a shape level with the reference: "left of" would be ambiguous
    ref = _ref(scene, r)
    idx = [i for i, d in deltas.items() if d > 0]
    fill = {"relation": relation, "ref": ref}
    return _targets(scene, "relation", T["relation"].format(**fill), idx, T["relation_none"].format(**fill))


def _pick_attribute(scene: Scene, rng: np.random.Generator, values: tuple[str, ...], attr: str) -> str:
    """Mostly an attribute value present in the scene; sometimes any (possibly absent) one."""
    present = sorted({getattr(p, attr) for p in scene.shapes})
    pool = present if rng.random() < 0.8 else list(values)
    return pool[int(rng.integers(len(pool)))]


def _q_every(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    if rng.random() < 0.5:
        kind = _pick_attribute(scene, rng, SHAPES, "kind")
        idx = [i for i, p in enumerate(scene.shapes) if p.kind == kind]
        return _targets(scene, "every", T["every_shape"].format(shape=kind), idx, T["every_shape_none"].format(shape=kind))
    colour = _pick_attribute(scene, rng, tuple(COLOURS), "colour")
    idx = [i for i, p in enumerate(scene.shapes) if p.colour == colour]
    return _targets(
        scene, "every", T["every_colour"].format(colour=colour), idx, T["every_colour_none"].format(colour=colour)
    )


def _q_all(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    return _targets(scene, "all", T["all"], list(range(len(scene.shapes))), "")


def _q_except(scene: Scene, rng: np.random.Generator) -> SynthQuestion | None:
    if rng.random() < 0.5:
        kind = _pick_attribute(scene, rng, SHAPES, "kind")
        idx = [i for i, p in enumerate(scene.shapes) if p.kind != kind]
        return _targets(
            scene, "except", T["except_shape"].format(shape=kind), idx, T["except_shape_none"].format(shape=kind)
        )
    colour = _pick_attribute(scene, rng, tuple(COLOURS), "colour")
    idx = [i for i, p in enumerate(scene.shapes) if p.colour != colour]
    return _targets(
        scene, "except", T["except_colour"].format(colour=colour), idx, T["except_colour_none"].format(colour=colour)
    )


QUESTION_MAKERS: dict[str, Callable[[Scene, np.random.Generator], SynthQuestion | None]] = {
    "refer": _q_refer,
    "absent": _q_absent,
    "same_colour": _q_same_colour,
    "same_shape": _q_same_shape,
    "position": _q_position,
    "size": _q_size,
    "relation": _q_relation,
    "every": _q_every,
    "all": _q_all,
    "except": _q_except,
}


def scene_questions(
    scene: Scene, rng: np.random.Generator, n: int, weights: dict[str, float] | None = None,
    order: str = "category",
) -> list[SynthQuestion]:
    """Up to ``n`` distinct questions about ``scene``, kinds drawn by ``weights``; multi-target
    answers list their targets in ``order``."""
    weights = weights or KIND_WEIGHTS
    kinds = [k for k, w in weights.items() if w > 0]
    p = np.array([weights[k] for k in kinds], dtype=float)
    p /= p.sum()
    out: list[SynthQuestion] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        q = QUESTION_MAKERS[kinds[int(rng.choice(len(kinds), p=p))]](scene, rng)
        if q is not None and q.question not in seen:
            seen.add(q.question)
            if q.ordered and q.targets:
                q.targets = order_targets(scene, q.targets, order)
                q.answer = _answer([scene.shapes[i].name for i in q.targets])
            out.append(q)
    return out


# ---------------------------------------------------------------------------- splits


def split_seed(seed: int, split: str) -> list[int]:
    """Independent seed per split (train never shares a random stream with val)."""
    return [int(seed), zlib.crc32(split.encode())]


def _annotation(i: int, p: Shape) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = encode_rle(p.mask)
    box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
    return {
        "id": i,
        "category_id": _category_rank(p) + 1,
        "category_name": p.name,
        "rephrased_name": f"the {p.name}",
        "bbox": [float(v) for v in box],
        "area": p.area,
        "iscrowd": 0,
        "segmentation": rle,
    }


def iter_split(
    split: str,
    n_questions: int,
    seed: int,
    cfg: SynthConfig = SynthConfig(),
    exclude: set[str] | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """``(MUSE record, image [H, W, 3])`` pairs holding ``n_questions`` questions in total.

    ``exclude``: image hashes already used (by other splits); updated in place, so passing the
    same set to every split keeps all images distinct.
    """
    rng = np.random.default_rng(split_seed(seed, split))
    exclude = set() if exclude is None else exclude
    done = 0
    index = 0
    while done < n_questions:
        scene = generate_scene(rng, cfg)
        digest = hashlib.sha1(scene.image.tobytes()).hexdigest()
        if digest in exclude:
            continue  # never repeat an image, within or across splits
        qs = scene_questions(
            scene, rng, min(cfg.questions_per_image, n_questions - done), cfg.kind_weights, cfg.answer_order
        )
        if not qs:
            continue
        exclude.add(digest)
        anns = [_annotation(i, p) for i, p in enumerate(scene.shapes)]
        record = {
            "id": index,
            "file_name": f"images/{split}/{index:06d}.png",
            "height": cfg.size,
            "width": cfg.size,
            "ann_list": anns,
            "questions": [q.question for q in qs],
            "answers": [[anns[i] for i in q.targets] for q in qs],
            "text_answers": [q.answer for q in qs],
            "question_kinds": [q.kind for q in qs],
            "image_sha1": digest,
        }
        done += len(qs)
        index += 1
        yield record, scene.image


def write_synth(
    out: str | os.PathLike,
    splits: dict[str, int],
    seed: int = 0,
    cfg: SynthConfig = SynthConfig(),
    progress: bool = False,
    split_configs: dict[str, SynthConfig] | None = None,
) -> dict[str, Any]:
    """Write ``out/<split>.json`` + ``out/images/<split>/*.png`` for each split; returns ``info``.

    ``splits`` maps split name -> number of questions (e.g. ``{"train": 6000, "val": 200}``).
    ``split_configs``: another config for some splits (e.g. a training mix of question kinds
    that differs from the held-out one); images stay distinct across all splits.
    Also writes ``out/info.json`` (parameters, images/questions per split, target histogram).
    """
    from PIL import Image
    from tqdm import tqdm

    out = Path(out)
    seen: set[str] = set()
    split_configs = dict(split_configs or {})
    unknown = set(split_configs) - set(splits)
    if unknown:
        raise ConfigError(f"split_configs for splits not written: {sorted(unknown)}")
    info: dict[str, Any] = {"seed": seed, "config": asdict(cfg), "splits": {}}
    if split_configs:
        info["split_configs"] = {k: asdict(v) for k, v in split_configs.items()}
    for split, n in splits.items():
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        bar = tqdm(total=n, desc=f"synth {split}", unit="q", disable=not progress)
        for record, image in iter_split(split, n, seed, split_configs.get(split, cfg), seen):
            Image.fromarray(image).save(out / record["file_name"], compress_level=1)
            records.append(record)
            bar.update(len(record["questions"]))
        bar.close()
        # json.dumps, not json.dump: only the one-shot call uses the C encoder (2.3 against ~0.4 s
        # for the demo's 8,000 questions), and the bytes are the same
        (out / f"{split}.json").write_text(json.dumps(records, separators=(",", ":")), encoding="utf-8")
        counts = [len(a) for r in records for a in r["answers"]]
        info["splits"][split] = {
            "images": len(records),
            "questions": len(counts),
            "targets_histogram": {str(k): counts.count(k) for k in range(max(counts, default=0) + 1)},
        }
    with open(out / "info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


# ---------------------------------------------------------------------- tokenizer corpus


def tokenizer_corpus() -> list[str]:
    """Every sentence pattern the synthetic set (and the instruction suffixes) can produce.

    Each template is filled with every colour / shape / name / relation it can take, and each
    answer form with one and three names, so every word and punctuation mark that can occur is
    present. ``{seg}`` is left out (the codebook tokens are added to the tokenizer separately).
    """
    names = [f"{c} {k}" for c in COLOURS for k in SHAPES]
    refs = names + list(SHAPES)
    lines: list[str] = list(INSTRUCTIONS)

    def answer(ns: list[str]) -> str:
        return _answer(ns).replace(f" {SEG_PLACEHOLDER}", "")

    for i, name in enumerate(names):
        trio = [name, names[(i + 1) % len(names)], names[(i + 2) % len(names)]]
        lines += [
            T["refer"].format(names=name),
            T["refer"].format(names=join_words(trio)),
            T["absent"].format(name=name),
            T["same_shape"].format(ref=name),
            answer([name]),
            answer(trio),
        ]
    for ref in refs:
        lines += [T["same_colour"].format(ref=ref), T["same_colour_none"].format(ref=ref)]
        for relation in RELATIONS:
            lines += [T[key].format(relation=relation, ref=ref) for key in ("relation", "relation_none")]
    for kind in SHAPES:
        lines += [T[key].format(shape=kind) for key in ("same_shape_none", "every_shape", "every_shape_none")]
        lines += [T[key].format(shape=kind) for key in ("except_shape", "except_shape_none")]
    for colour in COLOURS:
        lines += [T[key].format(colour=colour) for key in ("every_colour", "every_colour_none")]
        lines += [T[key].format(colour=colour) for key in ("except_colour", "except_colour_none")]
    lines += [T["extreme"].format(extreme=w) for w in POSITIONS + SIZES]
    lines.append(T["all"])
    return list(dict.fromkeys(lines))  # de-duplicated, order kept

