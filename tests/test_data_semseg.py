"""Semantic-segmentation label maps -> multi-target MUSE records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm.cli import main
from pixellm.data.muse import load_muse, muse_samples
from pixellm.data.semseg import read_class_names, semseg_to_muse
from pixellm.errors import DataError


def write_semseg(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    label = np.zeros((12, 16), np.uint8)  # 0 = background (offset 1)
    label[:, :4] = 1  # wall
    label[8:, 8:] = 3  # sky
    label[0, 15] = 255  # unlabelled
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(label, mode="L").save(labels / "a.png")
    only_floor = np.full((5, 6), 2, np.uint8)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(images / "b.png")
    Image.fromarray(only_floor).convert("P").save(labels / "b.png")  # palette mode is fine
    (tmp_path / "classes.txt").write_text("wall\nfloor;flooring\nsky, heaven\n")
    return images, labels, label


def test_class_maps_become_multi_target_questions(tmp_path):
    images, labels, label = write_semseg(tmp_path)
    names = read_class_names(tmp_path / "classes.txt")
    assert names == ["wall", "floor", "sky"]  # first synonym only
    recs = semseg_to_muse(images, labels, names, offset=1, min_targets=2, max_targets=2)
    a, b = recs
    assert (a["file_name"], a["height"], a["width"]) == ("a.jpg", 12, 16)
    assert a["questions"] in (["Please segment the wall and sky in the image."],
                              ["Please segment the sky and wall in the image."])
    first, second = (t["category_name"] for t in a["answers"][0])
    assert a["text_answers"] == [f"{first} is {{seg}} and {second} is {{seg}}."]
    assert b["questions"] == ["Please segment the floor in the image."]
    assert b["answers"][0][0]["bbox"] == [0.0, 0.0, 6.0, 5.0]
    # Masks decode to exactly the pixels of each class value.
    path = tmp_path / "sem.json"
    path.write_text(json.dumps(recs))
    samples, _ = muse_samples(path, image_root=images)
    masks = samples[0].load_masks()
    value = {"wall": 1, "sky": 3}
    for t, m in zip(a["answers"][0], masks):
        assert (m == (label == value[t["category_name"]])).all()
        assert t["area"] == int(m.sum())


def test_semseg_errors_name_the_file(tmp_path):
    images, labels, _ = write_semseg(tmp_path)
    with pytest.raises(DataError, match=r"labels/a\.png: label value 3 has no class name \(2 names, offset 1\)"):
        semseg_to_muse(images, labels, ["wall", "floor"], offset=1)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(labels / "b.png")
    with pytest.raises(DataError, match=r"labels/b\.png: label map is 7x5 but the image is 6x5"):
        semseg_to_muse(images, labels, ["wall", "floor", "sky"], offset=1)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(labels / "b.png")
    with pytest.raises(DataError, match=r"labels/b\.png: label map must be single-channel"):
        semseg_to_muse(images, labels, ["wall", "floor", "sky"], offset=1)


def test_cli_semseg2muse(tmp_path, capsys):
    images, labels, _ = write_semseg(tmp_path)
    out = tmp_path / "out.json"
    code = main(["data", "semseg2muse", "--images", str(images), "--labels", str(labels),
                 "--classes", str(tmp_path / "classes.txt"), "--offset", "1", "--out", str(out)])
    assert code == 0
    assert "2 images" in capsys.readouterr().out
    recs = load_muse(out)
    assert sorted(t["category_name"] for r in recs for a in r["answers"] for t in a) == ["floor", "sky", "wall"]
