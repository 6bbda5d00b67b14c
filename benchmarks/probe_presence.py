"""How well the LLM's image tokens tell which objects an image holds (docs/training.md, "The demo").

A linear classifier on each of the 64 image tokens the LLM reads, max-pooled over the tokens,
predicts which of the synthetic set's 15 colour-shape categories the image holds. It is fit on
the first ``--fit`` training images and scored on the held-out images plus ``--score`` further
training images. Reported: per-category accuracy and the share of images whose whole inventory
is right, for the vision tower's features (``tower``) and, with a trained checkpoint, for the
projected tokens (``projected``).

    python benchmarks/probe_presence.py demo_out                       # the demo's own tower
    python benchmarks/probe_presence.py demo_out --tower other/vision_tower
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from pixellm.data.synth import COLOURS, SHAPES
from pixellm.infer.predictor import Predictor
from pixellm.train.setup import load_vision_weights
from pixellm.train.vision_pretrain import llm_grid_features

NUM_CATEGORIES = len(COLOURS) * len(SHAPES)  # synthetic category_id = 1 .. NUM_CATEGORIES


def tokens(pred: Predictor, data: Path, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tower grid features, projected LLM tokens, presence labels) of ``records``: one vision
    pass; the projected tokens are ``mm_projector`` of the grid features, as in ``encode_images``."""
    model = pred.model
    pixels = pred.processor.image_processor([Image.open(data / r["file_name"]).convert("RGB") for r in records])
    g = model.config.llm_image_grid
    raw = llm_grid_features(model, pixels["pixel_values"], pixels["resized_sizes"]).unflatten(1, (g * g, -1))
    with torch.no_grad():
        projected = model.mm_projector(raw.to(model.mm_projector[0].weight.dtype)).float()
    labels = torch.zeros(len(records), NUM_CATEGORIES)
    for i, r in enumerate(records):
        for a in r["ann_list"]:
            labels[i, a["category_id"] - 1] = 1
    return raw.float(), projected, labels


def probe(x_fit: torch.Tensor, y_fit: torch.Tensor, x_score: torch.Tensor, y_score: torch.Tensor,
          steps: int = 600) -> dict[str, float]:
    torch.manual_seed(0)
    mu, sd = x_fit.mean((0, 1)), x_fit.std((0, 1)) + 1e-6
    x_fit, x_score = (x_fit - mu) / sd, (x_score - mu) / sd
    head = torch.nn.Linear(x_fit.shape[-1], y_fit.shape[-1])
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x_fit), (256,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x_fit[idx]).max(1).values, y_fit[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = (head(x_score).max(1).values > 0) == y_score.bool()
    return {"per_category": round(right.float().mean().item(), 4),
            "whole_inventory": round(right.all(1).float().mean().item(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_dir", type=Path, help="a pixellm demo output folder (data/ and checkpoint/)")
    ap.add_argument("--tower", help="probe this CLIP folder's features instead of the checkpoint's tower")
    ap.add_argument("--fit", type=int, default=3000)
    ap.add_argument("--score", type=int, default=500)
    args = ap.parse_args()
    data = args.demo_dir / "data"
    pred = Predictor.from_pretrained(args.demo_dir / "checkpoint")
    if args.tower:
        load_vision_weights(pred.model, args.tower)
    train = json.loads((data / "train.json").read_text(encoding="utf-8"))
    val = json.loads((data / "val.json").read_text(encoding="utf-8"))
    raw_fit, proj_fit, y_fit = tokens(pred, data, train[:args.fit])
    raw_sc, proj_sc, y_sc = tokens(pred, data, val + train[args.fit:args.fit + args.score])
    result = {"tower": probe(raw_fit, y_fit, raw_sc, y_sc)}
    if not args.tower:
        result["projected"] = probe(proj_fit, y_fit, proj_sc, y_sc)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
