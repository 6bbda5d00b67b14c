"""Where the demo's masks fail (docs/demo-rounds.md, thirteenth round).

Reads a demo folder's held-out set (``data/val.json``) and its teacher-forced predictions
(``predictions.jsonl``, the lines with ``"teacher_forced": true``: the answer is the reference, so
its masks pair with the reference targets in order) and sorts every target whose mask has IoU
< ``--below`` with its ground truth:

- ``same-colour leak``: the mask covers, for more than ``--share`` of its area, another object of
  the target's colour;
- ``other leak``: the same for an object of another colour;
- ``miss``: the mask covers less than half of the target and no other object;
- ``too large``: it covers the target and background.

    python benchmarks/mask_failures.py demo_out
    python benchmarks/mask_failures.py demo_out other_demo_out --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from pixellm.data.masks import decode_rle


def failures(folder: Path, below: float = 0.5, share: float = 0.1) -> dict:
    """Counts of each failure kind and the mean target IoU over the teacher-forced masks."""
    records = json.loads((folder / "data" / "val.json").read_text(encoding="utf-8"))
    kinds: Counter = Counter()
    ious = []
    for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        pred = json.loads(line)
        if not pred.get("teacher_forced"):
            continue
        record = records[pred["image"]]
        targets = record["answers"][pred["question"]]
        objects = [(a["category_name"], decode_rle(a["segmentation"])) for a in record["ann_list"]]
        for target, rle in zip(targets, pred["masks"]):
            gt, mask = decode_rle(target["segmentation"]), decode_rle(rle)
            union = (gt | mask).sum()
            iou = float((gt & mask).sum() / union) if union else 1.0
            ious.append(iou)
            if iou >= below:
                continue
            colour = target["category_name"].split()[0]
            covered = [name for name, m in objects if name != target["category_name"]
                       and (m & mask).sum() > share * max(1, mask.sum())]
            if any(name.split()[0] == colour for name in covered):
                kinds["same-colour leak"] += 1
            elif covered:
                kinds["other leak"] += 1
            elif (gt & mask).sum() < 0.5 * gt.sum():
                kinds["miss"] += 1
            else:
                kinds["too large"] += 1
    return {"targets": len(ious), "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
            f"iou_below_{below}": sum(kinds.values()), "kinds": dict(kinds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="demo output folders (pixellm demo --out)")
    ap.add_argument("--below", type=float, default=0.5, help="IoU under which a target counts as failed")
    ap.add_argument("--share", type=float, default=0.1, help="share of the mask on another object that counts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = {str(f): failures(f, args.below, args.share) for f in args.folders}
    for folder, r in results.items():
        print(folder, json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
