"""Synthetic multi-target reasoning set: pixels, masks, question semantics, disjoint splits."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from pixellm.cli import main
from pixellm.data.masks import decode_rle
from pixellm.data.muse import load_muse
from pixellm.data.synth import (
    BACKGROUND,
    COLOURS,
    KIND_WEIGHTS,
    SHAPES,
    SynthConfig,
    _grow,
    generate_scene,
    iter_split,
    tokenizer_corpus,
    write_synth,
)
from pixellm.errors import ConfigError


@pytest.fixture(scope="module")
def many():
    """1,500 training questions in memory (records with decoded masks + images)."""
    out = []
    for rec, image in iter_split("train", 1500, seed=11):
        masks = {a["id"]: decode_rle(a["segmentation"]) for a in rec["ann_list"]}
        out.append((rec, image, masks))
    return out


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5


def test_masks_match_the_drawn_pixels(many):
    for rec, image, masks in many[:300]:
        union = np.zeros(image.shape[:2], bool)
        for a in rec["ann_list"]:
            m = masks[a["id"]]
            colour = a["category_name"].split()[0]
            assert m.any() and (image[m] == COLOURS[colour]).all()
            assert not (union & m).any()  # visible regions never overlap
            union |= m
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert (image[~union] == BACKGROUND).all()  # every shape pixel belongs to a mask
        # Same-colour shapes never touch, so their border is visible.
        for a in rec["ann_list"]:
            for b in rec["ann_list"]:
                if a["id"] < b["id"] and a["category_name"].split()[0] == b["category_name"].split()[0]:
                    assert not (binary_dilation(masks[a["id"]], np.ones((3, 3), bool)) & masks[b["id"]]).any()
        names = [a["category_name"] for a in rec["ann_list"]]
        assert len(set(names)) == len(names) and 2 <= len(names) <= 6


def test_one_pixel_growth_equals_scipys_binary_dilation():
    """The scene writer's own 3 x 3 dilation (the same-colour "touching" rule) is scipy's, pixel
    for pixel, borders included, so the data it writes did not change when it replaced scipy's."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        mask = rng.random((h, w)) < rng.random() * 0.2
        assert (_grow(mask) == binary_dilation(mask, np.ones((3, 3), bool))).all()


def test_scene_rules_hold():
    rng = np.random.default_rng(0)
    cfg = SynthConfig()
    for _ in range(200):
        scene = generate_scene(rng, cfg)
        for p in scene.shapes:
            assert 2 * p.area >= p.full_area  # at least half of each shape visible
            assert cfg.min_extent <= p.extent <= cfg.max_extent


def test_answers_name_their_targets(many):
    kinds, counts = Counter(), Counter()
    for rec, _, _ in many:
        for q, targets, text, kind in zip(rec["questions"], rec["answers"], rec["text_answers"], rec["question_kinds"]):
            kinds[kind] += 1
            counts[len(targets)] += 1
            named = re.findall(r"[Tt]he (\w+ \w+) \{seg\}", text)
            assert named == [t["category_name"] for t in targets], (q, text)
            assert text.count("{seg}") == len(targets)
            if not targets:
                assert "{seg}" not in text and (text.startswith("There is no") or text.startswith("Every shape"))
    assert set(counts) == set(range(7)), counts  # 0..6 targets all occur
    assert counts[0] > 0.05 * sum(counts.values())  # no-target questions are common enough
    assert set(kinds) == {"refer", "absent", "same_colour", "same_shape", "position", "size", "relation",
                          "every", "all", "except"}


@pytest.mark.parametrize("order", ["category", "left_to_right"])
def test_multi_target_answers_follow_the_answer_order(order):
    rank = {f"{c} {k}": i for i, (c, k) in enumerate((c, k) for c in COLOURS for k in SHAPES)}
    checked = Counter()
    for rec, _ in iter_split("train", 600, seed=5, cfg=SynthConfig(answer_order=order)):
        for q, targets, kind in zip(rec["questions"], rec["answers"], rec["question_kinds"]):
            names = [t["category_name"] for t in targets]
            if kind == "refer":  # the question's own order
                assert [q.index(n) for n in names] == sorted(q.index(n) for n in names), (q, names)
                continue
            if len(targets) < 2:
                continue
            checked[kind] += 1
            if order == "category":
                assert [rank[n] for n in names] == sorted(rank[n] for n in names), (q, names)
            else:
                xs = [centroid(decode_rle(t["segmentation"]))[0] for t in targets]
                assert xs == sorted(xs), (q, names)
    assert {"all", "every", "except"} <= set(checked)


def test_answer_order_is_checked():
    with pytest.raises(ConfigError, match="answer_order"):
        SynthConfig(answer_order="random")


def test_reasoning_answers_are_correct(many):
    """Recompute each reasoning question's targets from the masks and the question text."""
    checked = Counter()
    for rec, _, masks in many:
        anns = rec["ann_list"]
        colour = {a["id"]: a["category_name"].split()[0] for a in anns}
        kind = {a["id"]: a["category_name"].split()[1] for a in anns}
        for q, targets, qkind in zip(rec["questions"], rec["answers"], rec["question_kinds"]):
            got = sorted(t["id"] for t in targets)
            want = None
            if q == "Please segment all the shapes.":
                want = list(kind)
            elif m := re.fullmatch(r"Please segment all the (\w+)s\.", q):
                want = [i for i in kind if kind[i] == m[1]]
            elif m := re.fullmatch(r"Please segment every (\w+) shape\.", q):
                want = [i for i in colour if colour[i] == m[1]]
            elif m := re.fullmatch(r"Please segment every shape that is not a? ?(\w+)\.", q):
                want = [i for i in kind if m[1] not in (kind[i], colour[i])]
            elif m := re.fullmatch(r"Which shapes have the same colour as the (\w+(?: \w+)?)\?", q):
                ref = [i for i in kind if m[1] in (kind[i], f"{colour[i]} {kind[i]}")]
                assert len(ref) == 1, q  # the reference is unique
                want = [i for i in colour if i != ref[0] and colour[i] == colour[ref[0]]]
            elif m := re.fullmatch(r"Which shapes have the same shape as the (\w+) (\w+)\?", q):
                ref = [i for i in kind if (colour[i], kind[i]) == (m[1], m[2])]
                want = [i for i in kind if i not in ref and kind[i] == m[2]]
            elif m := re.fullmatch(r"Which shapes are (left of|right of|above|below) the (\w+(?: \w+)?)\?", q):
                ref = [i for i in kind if m[2] in (kind[i], f"{colour[i]} {kind[i]}")]
                assert len(ref) == 1, q
                axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[m[1]]
                r = centroid(masks[ref[0]])[axis]
                want = [i for i in masks if i != ref[0] and sign * (centroid(masks[i])[axis] - r) > 0]
            elif m := re.fullmatch(r"Please segment the (leftmost|rightmost|topmost|bottommost|largest|smallest) shape\.", q):
                cx = {i: centroid(masks[i]) for i in masks}
                score = {
                    "leftmost": {i: -c[0] for i, c in cx.items()}, "rightmost": {i: c[0] for i, c in cx.items()},
                    "topmost": {i: -c[1] for i, c in cx.items()}, "bottommost": {i: c[1] for i, c in cx.items()},
                    "largest": {i: masks[i].sum() for i in masks}, "smallest": {i: -masks[i].sum() for i in masks},
                }[m[1]]
                want = [max(score, key=score.get)]
            elif qkind in ("refer", "absent"):
                names = re.fullmatch(r"Please segment the (.+) in the image\.", q)[1].replace(" and ", ", ").split(", ")
                want = [a["id"] for a in anns if a["category_name"] in names]
            if want is not None:
                assert got == sorted(want), (q, got, want)
                checked[qkind] += 1
    assert len(checked) == 10  # every kind was verified


def test_split_files_are_disjoint_and_deterministic(tmp_path):
    info = write_synth(tmp_path / "a", {"train": 60, "val": 20}, seed=4)
    write_synth(tmp_path / "b", {"train": 60, "val": 20}, seed=4)
    assert info["splits"]["train"]["questions"] == 60 and info["splits"]["val"]["questions"] == 20
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.json").read_bytes() == (tmp_path / "b" / f"{split}.json").read_bytes()
    hashes = {}
    for split in ("train", "val"):
        recs = load_muse(tmp_path / "a" / f"{split}.json")
        hashes[split] = set()
        for r in recs:
            pixels = np.asarray(Image.open(tmp_path / "a" / r["file_name"]))
            assert pixels.shape == (64, 64, 3)
            digest = hashlib.sha1(pixels.tobytes()).hexdigest()
            assert digest == r["image_sha1"]
            hashes[split].add(digest)
        assert len(hashes[split]) == len(recs)
    assert not hashes["train"] & hashes["val"]
    # The val split does not depend on how much training data was asked for.
    write_synth(tmp_path / "c", {"train": 10, "val": 20}, seed=4)
    assert (tmp_path / "c" / "val.json").read_bytes() == (tmp_path / "a" / "val.json").read_bytes()


def test_a_split_can_have_its_own_mix_of_question_kinds(tmp_path):
    """A training mix other than the held-out one: the other split is unchanged, the mix is
    recorded, images stay distinct across splits."""
    only = {k: (1.0 if k in ("position", "size") else 0.0) for k in KIND_WEIGHTS}
    info = write_synth(tmp_path / "m", {"train": 40, "val": 20}, seed=4,
                       split_configs={"train": SynthConfig(kind_weights=only)})
    write_synth(tmp_path / "d", {"train": 40, "val": 20}, seed=4)
    kinds = {k for r in load_muse(tmp_path / "m" / "train.json") for k in r["question_kinds"]}
    assert kinds == {"position", "size"}
    assert (tmp_path / "m" / "val.json").read_bytes() == (tmp_path / "d" / "val.json").read_bytes()
    assert info["split_configs"]["train"]["kind_weights"] == only
    train = {r["image_sha1"] for r in load_muse(tmp_path / "m" / "train.json")}
    assert not train & {r["image_sha1"] for r in load_muse(tmp_path / "m" / "val.json")}
    with pytest.raises(ConfigError, match="split_configs"):
        write_synth(tmp_path / "x", {"train": 4}, split_configs={"test": SynthConfig()})


def test_generation_is_fast():
    t0 = time.perf_counter()
    n = sum(len(r["questions"]) for r, _ in iter_split("train", 1000, seed=0))
    assert n == 1000
    assert time.perf_counter() - t0 < 5.0  # ~0.5 s on 2 cores: 6,000 questions take seconds


def test_tokenizer_corpus_covers_every_word(many):
    words = {w for line in tokenizer_corpus() for w in re.findall(r"\w+|[^\w\s]", line)}
    assert "{" not in words and "seg" not in words
    for rec, _, _ in many:
        for text in rec["questions"] + rec["text_answers"]:
            assert set(re.findall(r"\w+|[^\w\s]", text.replace("{seg}", ""))) <= words, text


def test_cli_synth(tmp_path, capsys):
    code = main(["data", "synth", "--out", str(tmp_path), "--train", "9", "--val", "4", "--seed", "2",
                 "--size", "48", "--quiet"])
    assert code == 0
    assert "train 9 questions" in capsys.readouterr().out
    recs = json.loads((tmp_path / "val.json").read_text())
    assert recs[0]["height"] == 48 and Image.open(tmp_path / recs[0]["file_name"]).size == (48, 48)
    assert json.loads((tmp_path / "info.json").read_text())["config"]["max_extent"] == 17
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "3", "--train", "2", "--quiet"]) == 1
    assert "min_extent" in capsys.readouterr().err
    assert set(SHAPES) == {"circle", "square", "triangle"}


def test_cli_synth_text_split_holds_every_kind_but_plain_referring(tmp_path, capsys):
    from pixellm.data.synth import REASONING_KIND_WEIGHTS

    assert main(["data", "synth", "--out", str(tmp_path), "--train", "6", "--val", "4", "--train-text", "60",
                 "--quiet"]) == 0
    assert "train_text 60 questions" in capsys.readouterr().out
    text = json.loads((tmp_path / "train_text.json").read_text())
    kinds = {k for r in text for k in r["question_kinds"]}
    assert "refer" not in kinds and len(kinds) >= 5 and kinds <= set(REASONING_KIND_WEIGHTS)
    info = json.loads((tmp_path / "info.json").read_text())
    assert "refer" not in info["split_configs"]["train_text"]["kind_weights"]
    # its images are distinct from the held-out ones
    val = json.loads((tmp_path / "val.json").read_text())
    assert not {r["image_sha1"] for r in text} & {r["image_sha1"] for r in val}
