"""Data-set statistics of supplement C.2 for a MUSE-format file.

- instances per category (over all question-answer pairs; MUSE: low-shot LVIS distribution),
- description token counts of the target instances (whitespace words, or a tokenizer's tokens),
- targets per question (MUSE: mean 3.7, max 34).

``write_stats`` writes three PNG plots and ``summary.json``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pixellm.data.muse import load_muse, target_description
from pixellm.errors import DataError

PLOTS = ("instances_per_category.png", "token_counts.png", "targets_per_question.png")


def whitespace_count(text: str) -> int:
    return len(text.split())


def tokenizer_counter(path: str | os.PathLike) -> Callable[[str], int]:
    """Token counter of a tokenizer: a ``tokenizer.json`` file or a saved (HF) tokenizer folder."""
    path = str(path)
    if os.path.isfile(path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)
    return lambda text: len(hf(text, add_special_tokens=False)["input_ids"])


def _histogram(values: list[int]) -> dict[str, int]:
    counts = Counter(values)
    return {str(k): counts[k] for k in sorted(counts)}


def _summary(values: list[int]) -> dict[str, Any]:
    return {
        "mean": sum(values) / len(values) if values else 0.0,
        "max": max(values, default=0),
        "histogram": _histogram(values),
    }


def compute_stats(
    records: Iterable[dict[str, Any]], count_tokens: Callable[[str], int] = whitespace_count, path: str = ""
) -> dict[str, Any]:
    """Statistics dict (the content of ``summary.json``). Errors name ``path`` and the record."""
    categories: Counter = Counter()
    tokens: list[int] = []
    targets: list[int] = []
    images = 0
    for i, rec in enumerate(records):
        images += 1
        for q, answer in enumerate(rec["answers"]):
            targets.append(len(answer))
            for t, ann in enumerate(answer):
                if not isinstance(ann, dict):
                    raise DataError(f"question {q} target {t}: expected an annotation object", path=path, record=i)
                categories[str(ann.get("category_name", ann.get("category_id", "unknown")))] += 1
                tokens.append(count_tokens(target_description(ann)))
    return {
        "images": images,
        "questions": len(targets),
        "instances": len(tokens),
        "categories": len(categories),
        "no_target_questions": targets.count(0),
        "targets_per_question": _summary(targets),
        "description_tokens": _summary(tokens),
        "instances_per_category": dict(categories.most_common()),
    }


def _bar(path: Path, labels: list[str], values: list[int], title: str, xlabel: str, log: bool = False) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    fig = Figure(figsize=(min(16.0, max(6.0, 0.18 * len(labels))), 4.0))
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color="#4477aa")
    if len(labels) <= 60:
        ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0, fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_stats(
    data: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Read a MUSE file, write ``summary.json`` and the plots of ``PLOTS`` under ``out``."""
    records = load_muse(data)
    count = tokenizer_counter(tokenizer) if tokenizer else whitespace_count
    stats = compute_stats(records, count, str(data))
    stats["source"] = str(data)
    stats["token_unit"] = f"tokenizer {tokenizer}" if tokenizer else "whitespace words"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cats = list(stats["instances_per_category"].items())
    _bar(out / PLOTS[0], [c for c, _ in cats], [n for _, n in cats], "Instances per category", "category", log=True)
    for name, key, title, xlabel in (
        (PLOTS[1], "description_tokens", "Description length", "tokens per description"),
        (PLOTS[2], "targets_per_question", "Targets per question", "targets"),
    ):
        hist = stats[key]["histogram"]
        top = max((int(k) for k in hist), default=0)
        _bar(out / name, [str(k) for k in range(top + 1)], [hist.get(str(k), 0) for k in range(top + 1)], title, xlabel)
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    return stats
