"""Parity check: our CLIP path at 448 px against the released vision tower's rule, at full size.

A randomly initialised CLIP ViT-L/14-336 (seeded; no download) runs one padded image (resized to
299 x 448, as the processor gives for a 2:3 picture) three ways:
- reference: a stock ``transformers`` CLIPVisionModel built at 448 px whose position table is made
  by the released rule (docs/fidelity.md: rows 0..575 resized bilinearly 24 -> 32, the old last
  row appended) and whose attention gets the released key mask (nearest-resized pixel mask, CLS
  valid, additive dtype minimum);
- ours: ``clip_multiscale_features(..., "released")`` with the processor's patch mask;
- the former rule (last row taken as CLS, bicubic), for scale.
Prints and writes ``benchmarks/results/released_parity.json``: largest absolute differences of
the table and of the layer -2 and -11 patch features.

    python benchmarks/released_parity.py [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from pixellm.conventions import grid_valid_mask
from pixellm.model.configuration_pixellm import CLIP_VIT_L_336
from pixellm.model.vision import clip_multiscale_features, interpolate_position_embeddings

LAYERS = [-2, -11]
S, PATCH, RESIZED = 448, 14, (299, 448)


def released_table(weight: torch.Tensor, grid: int) -> torch.Tensor:
    g = int(round((weight.shape[0] - 1) ** 0.5))
    head = weight[:-1].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    head = F.interpolate(head, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat([head.permute(0, 2, 3, 1).reshape(grid * grid, -1), weight[-1:]])


def former_table(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """The rule this project used before issue 11: last row as CLS, bicubic patch grid."""
    g = int(round((weight.shape[0] - 1) ** 0.5))
    head = weight[:-1].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    head = F.interpolate(head, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([weight[-1:], head.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "released_parity.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    native = CLIPVisionConfig(**CLIP_VIT_L_336)
    clip = CLIPVisionModel(native).eval()
    grid = S // PATCH
    weight = clip.embeddings.position_embedding.weight.detach()
    ref_table = released_table(weight, grid)

    big_cfg = copy.deepcopy(native)
    big_cfg.image_size = S
    big = CLIPVisionModel(big_cfg).eval()
    state = dict(clip.state_dict())
    state["embeddings.position_embedding.weight"] = ref_table
    big.load_state_dict(state)

    pixels = torch.randn(1, 3, S, S)
    pixels[:, :, RESIZED[0]:] = 0
    pixels[:, :, :, RESIZED[1]:] = 0
    pixel_mask = torch.zeros(1, 1, S, S)
    pixel_mask[..., : RESIZED[0], : RESIZED[1]] = 1
    keys = torch.cat([torch.ones(1, 1), F.interpolate(pixel_mask, size=(grid, grid), mode="nearest").flatten(1)], 1)
    additive = torch.zeros(1, 1, keys.shape[1], keys.shape[1]).masked_fill(keys[:, None, None, :] == 0,
                                                                          torch.finfo(torch.float32).min)
    valid = grid_valid_mask(torch.tensor([RESIZED]), S, grid)
    with torch.no_grad():
        hs = big(pixels, output_hidden_states=True, attention_mask=additive).hidden_states
        ref = [hs[i][:, 1:] for i in LAYERS]
        ours = clip_multiscale_features(clip, pixels, valid, LAYERS, "released")
        # the former rule, through the same code path
        clip.embeddings.position_embedding.weight.data = weight
        import pixellm.model.vision as vision

        saved = vision.interpolate_position_embeddings
        vision.interpolate_position_embeddings = lambda w, g, mode="correct": former_table(w, g)
        try:
            former = clip_multiscale_features(clip, pixels, valid, LAYERS, "released")
        finally:
            vision.interpolate_position_embeddings = saved
    ours_table = interpolate_position_embeddings(weight, grid, "released")
    result = {
        "model": "random CLIP ViT-L/14-336 (seed 0) at 448 px, image resized to 299x448 and padded",
        "table_max_abs_diff": {"ours": float((ours_table - ref_table).abs().max()),
                               "former": float((former_table(weight, grid) - ref_table).abs().max())},
        "features_max_abs_diff": {
            f"layer{layer}": {"ours": float((o - r).abs().max()), "former": float((f - r).abs().max())}
            for layer, o, f, r in zip(LAYERS, ours, former, ref)
        },
        "feature_scale_max_abs": {f"layer{layer}": float(r.abs().max()) for layer, r in zip(LAYERS, ref)},
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
