"""refer format -> multi-referring MUSE records; the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from pixellm.cli import main
from pixellm.data.muse import load_muse, muse_samples
from pixellm.data.refer import refer_to_muse
from pixellm.data.unpickle import load_plain_pickle
from pixellm.errors import ConfigError, DataError


def box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


ANNS = {  # ann id -> (image id, category id, polygon)
    11: (1, 1, box(0, 0, 10, 10)),
    12: (1, 2, box(20, 0, 30, 10)),
    13: (1, 1, box(0, 20, 10, 30)),
    14: (1, 1, box(20, 20, 30, 30)),
    21: (2, 2, box(5, 5, 15, 15)),
}
REFS = [  # (ref id, ann id, split, sentences)
    (0, 11, "val", ["man in red", "left guy."]),
    (1, 12, "val", ["brown dog"]),
    (2, 13, "val", ["person"]),
    (3, 14, "val", ["person"]),  # same words as ref 2: never in one question with it
    (4, 21, "val", ["small  dog"]),
    (5, 11, "train", ["training only"]),
]


def write_refer(root, protocol=2):
    folder = root / "refcoco"
    folder.mkdir(parents=True)
    refs = [
        {"ref_id": r, "ann_id": a, "image_id": ANNS[a][0], "split": split, "category_id": ANNS[a][1],
         "file_name": "x.jpg", "sent_ids": list(range(len(sents))),
         "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": i} for i, s in enumerate(sents)]}
        for r, a, split, sents in REFS
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    inst = {
        "images": [{"id": 1, "file_name": "COCO_train2014_1.jpg", "height": 40, "width": 40},
                   {"id": 2, "file_name": "COCO_train2014_2.jpg", "height": 20, "width": 30}],
        "annotations": [{"id": a, "image_id": im, "category_id": c, "segmentation": seg, "bbox": [0, 0, 10, 10],
                         "area": 100, "iscrowd": 0} for a, (im, c, seg) in ANNS.items()],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    (folder / "instances.json").write_text(json.dumps(inst))
    return folder


def test_single_target_conversion_is_exact(tmp_path):
    write_refer(tmp_path)
    recs = refer_to_muse(tmp_path, "refcoco", "unc", "val", max_targets=1, sentences="first", image_prefix="train2014/")
    assert [r["file_name"] for r in recs] == ["train2014/COCO_train2014_1.jpg", "train2014/COCO_train2014_2.jpg"]
    img2 = recs[1]
    assert img2["questions"] == ["Please segment the small dog in the image."]
    assert img2["text_answers"] == ["small dog is {seg}."]
    target = img2["answers"][0][0]
    assert (target["id"], target["category_name"], target["rephrased_name"]) == (21, "dog", "small dog")
    by_ann = {a[0]["id"]: (q, t) for q, a, t in zip(recs[0]["questions"], recs[0]["answers"], recs[0]["text_answers"])}
    assert by_ann[11] == ("Please segment the man in red in the image.", "man in red is {seg}.")
    assert sorted(by_ann) == [11, 12, 13, 14]  # the train-split ref is left out


def test_multi_target_groups(tmp_path):
    write_refer(tmp_path)
    for seed in range(8):
        recs = refer_to_muse(tmp_path, split="val", min_targets=2, max_targets=3, seed=seed)
        rec = recs[0]
        seen = []
        for q, targets, text in zip(rec["questions"], rec["answers"], rec["text_answers"]):
            names = [t["rephrased_name"] for t in targets]
            assert 1 <= len(names) <= 3 and len(set(names)) == len(names)  # distinct descriptions
            if len(names) == 3:
                a, b, c = names
                assert q == f"Please segment the {a}, {b} and {c} in the image."
                assert text == f"{a} is {{seg}}, {b} is {{seg}} and {c} is {{seg}}."
            elif len(names) == 2:
                assert q == f"Please segment the {names[0]} and {names[1]} in the image."
                assert text == f"{names[0]} is {{seg}} and {names[1]} is {{seg}}."
            seen += [t["id"] for t in targets]
        assert sorted(seen) == [11, 12, 13, 14]  # every referred object exactly once per image
    # Deterministic for a seed, different across seeds.
    a = refer_to_muse(tmp_path, split="val", seed=3)
    assert a == refer_to_muse(tmp_path, split="val", seed=3)
    assert any(refer_to_muse(tmp_path, split="val", seed=s) != a for s in range(4, 9))


def test_all_sentences_mode_and_bad_options(tmp_path):
    write_refer(tmp_path)
    recs = refer_to_muse(tmp_path, split="val", max_targets=1, sentences="all")
    assert "Please segment the left guy in the image." in recs[0]["questions"]  # trailing "." dropped
    assert len(recs[0]["questions"]) == 5
    with pytest.raises(ConfigError, match="needs max_targets=1"):
        refer_to_muse(tmp_path, split="val", sentences="all")
    with pytest.raises(DataError, match="no refs with split 'testA'"):
        refer_to_muse(tmp_path, split="testA")


def test_cli_round_trip_masks(tmp_path):
    write_refer(tmp_path / "refer")
    out = tmp_path / "val.json"
    code = main(["data", "refer2muse", "--refer-root", str(tmp_path / "refer"), "--dataset", "refcoco",
                 "--split-by", "unc", "--split", "val", "--out", str(out)])
    assert code == 0
    records = load_muse(out)
    samples, _ = muse_samples(out)
    assert len(samples) == sum(len(r["questions"]) for r in records)
    for q, s in enumerate(samples):
        rec = records[s.meta["record"]]
        masks = s.load_masks()
        assert masks.shape[0] == s.answer.count("{seg}")
        for t, m in zip(rec["answers"][s.meta["question"]], masks):
            x0, y0 = ANNS[t["id"]][2][0][0:2]
            expected = np.zeros((rec["height"], rec["width"]), bool)
            expected[y0 : y0 + 10, x0 : x0 + 10] = True
            assert (m == expected).all(), q


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": Evil()}]))
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: unsafe or corrupt pickle: refusing to load global"):
        load_plain_pickle(path)
    assert not marker.exists()
    # Plain data of any protocol loads.
    plain = [{"a": [1, 2.5, None, True], "b": ("x", {"c": -3})}]
    for protocol in (0, 2, 5):
        path.write_bytes(pickle.dumps(plain, protocol=protocol))
        assert load_plain_pickle(path) == plain
    # Python 2 byte strings (how the refer files store text) come back as str: UTF-8 ...
    py2 = b"\x80\x02]q\x00U\x06caf\xc3\xa9 q\x01a."  # protocol 2: [SHORT_BINSTRING 'caf\xc3\xa9 ']
    path.write_bytes(py2)
    assert load_plain_pickle(path) == ["caf\u00e9 "]
    # ... or latin-1 when not valid UTF-8.
    path.write_bytes(py2.replace(b"\xc3\xa9", b"\xe9\x20"))
    assert load_plain_pickle(path) == ["caf\u00e9  "]


def test_cli_errors_name_file_and_record(tmp_path, capsys):
    folder = write_refer(tmp_path)
    refs = load_plain_pickle(folder / "refs(unc).p")
    del refs[1]["sentences"]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    code = main(["data", "refer2muse", "--refer-root", str(tmp_path), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "refs(unc).p:1: missing field 'sentences'" in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (folder / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    code = main(["data", "refer2muse", "--refer-root", str(tmp_path), "--out", str(tmp_path / "o.json")])
    assert code == 1 and "refusing to load global" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
