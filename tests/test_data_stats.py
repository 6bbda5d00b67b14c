"""Statistics (supplement C.2): exact numbers, plots, summary.json, tokenizer counts, errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pixellm.cli import main
from pixellm.data.stats import PLOTS, compute_stats, write_stats
from pixellm.errors import DataError

SEG = [[0, 0, 4, 0, 4, 4, 0, 4]]


def ann(cat, name=None):
    a = {"category_id": 1, "category_name": cat, "segmentation": SEG}
    if name:
        a["rephrased_name"] = name
    return a


def write_fixture(tmp_path):
    records = [
        {"file_name": "a.jpg", "height": 8, "width": 8, "questions": ["q1", "q2", "q3"],
         "answers": [[ann("chair", "the red chair."), ann("table")], [ann("chair")], []]},
        {"file_name": "b.jpg", "height": 8, "width": 8, "questions": ["q4"],
         "answers": [[ann("cup", "a cup on the left"), ann("chair"), ann("dog", "dog"), ann("chair")]]},
    ]
    path = tmp_path / "muse.json"
    path.write_text(json.dumps(records))
    return path, records


def test_exact_statistics(tmp_path):
    _, records = write_fixture(tmp_path)
    s = compute_stats(records)
    assert (s["images"], s["questions"], s["instances"], s["categories"], s["no_target_questions"]) == (2, 4, 7, 4, 1)
    assert s["instances_per_category"] == {"chair": 4, "table": 1, "cup": 1, "dog": 1}
    assert s["targets_per_question"] == {"mean": 7 / 4, "max": 4, "histogram": {"0": 1, "1": 1, "2": 1, "4": 1}}
    # words: "the red chair." 3, "table" 1, "chair" 1 x3, "a cup on the left" 5, "dog" 1
    assert s["description_tokens"] == {"mean": 13 / 7, "max": 5, "histogram": {"1": 5, "3": 1, "5": 1}}


def test_write_stats_with_a_tokenizer(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[UNK]", "the", "red", "chair", "table", "a", "cup", "on", "left", "dog", "."]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    path, _ = write_fixture(tmp_path)
    s = write_stats(path, tmp_path / "out", tmp_path / "tokenizer.json")
    assert s["description_tokens"]["histogram"] == {"1": 5, "4": 1, "5": 1}  # "chair" and "." split
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["description_tokens"] == s["description_tokens"] and saved["token_unit"].startswith("tokenizer")
    for name in PLOTS:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.size[0] >= 600


def test_cli_stats_and_errors(tmp_path, capsys):
    path, records = write_fixture(tmp_path)
    assert main(["data", "stats", "--data", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "targets/question mean 1.75 max 4" in capsys.readouterr().out
    records[1]["answers"][0][2] = "dog"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"muse\.json:1: question 0 target 2: expected an annotation object"):
        write_stats(path, tmp_path / "o2")
    records[1].pop("answers")
    path.write_text(json.dumps(records))
    assert main(["data", "stats", "--data", str(path), "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert "muse.json: record 1: missing field 'answers'" in err and len(err.strip().splitlines()) == 1
