"""Printing and writing metrics: a plain-text table for the terminal, JSON for files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODES = ("generated", "teacher_forced")


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    rows = []
    for mode in MODES:
        table = metrics.get(mode)
        if not table:
            continue
        rows.append((mode, "all", table))
        rows += [(mode, f"split {name}", m) for name, m in table.get("splits", {}).items()]
        rows += [(mode, f"targets {name}", m) for name, m in table.get("buckets", {}).items()]
    return rows


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_table(metrics: dict[str, Any]) -> str:
    """Readable table (percentages) of every mode / split / bucket, then the headline line."""
    refer = metrics.get("settings", {}).get("protocol") == "refer"
    cols = ["mode", "group", "samples", "missing", "gIoU", "cIoU"] + (["N-acc", "T-acc"] if refer else [])
    lines = [[*cols]]
    for mode, group, m in _rows(metrics):
        row = [mode, group, str(m["samples"]), str(m["missing"]), _fmt(m["gIoU"]), _fmt(m["cIoU"])]
        if refer:
            row += [_fmt(m.get("N-acc")), _fmt(m.get("T-acc"))]
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(cols))]
    text = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in lines
    ]
    text.insert(1, "-" * len(text[0]))
    judge = f" judge={metrics['judge']}" if metrics.get("judge") else ""
    text.append(f"{metrics['mode']}{judge}: gIoU={metrics['gIoU']:.4f} cIoU={metrics['cIoU']:.4f}")
    return "\n".join(text)


def write_metrics(metrics: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the metrics JSON (parent folders created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
