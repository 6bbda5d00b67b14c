"""Stage 1: dense supervised pre-training of the vision tower on segmentation masks.

The paper starts from a pretrained CLIP and keeps it frozen. A from-scratch tiny model has no such
tower, and a *random* frozen one is shape-blind: linear probes on what the LLM reads recover an
object's colour but not its shape (docs/training.md, "The demo"). Contrastive pre-training against
colour/shape/position words does not help either, because colour and position already tell the
scenes of a batch apart. So this stage makes shape *necessary*: every pixel of every patch is
classified into the category of the object it belongs to (or background), from that patch's
token alone, at each selected CLIP layer. A patch of a circle's interior looks like a patch of a
square's interior, so the token must carry the context of the whole object. The same head also
regresses, for every object pixel, its object's centroid and size: questions such as "the
leftmost shape" or "the largest shape" then compare values the LLM can read off the tokens,
instead of values it would have to assemble from positions and pixel counts itself.

The result is saved as a plain CLIP vision folder (``CLIPVisionModel.save_pretrained``), which
``TrainConfig.vision_weights`` loads like any other CLIP checkpoint; training then keeps it frozen.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixellm.errors import DataError
from pixellm.train.schedule import adamw

logger = logging.getLogger(__name__)
IGNORE = -100  # padded pixels: no label
RESULT_FILE = "vision_pretrain.json"
# Images per forward when the trained tower reads a whole set (held-out accuracy, probe features;
# why 64: llm_grid_features).
FEATURE_BATCH = 64


@dataclass
class VisionPretrainConfig:
    """Stage-1 recipe (the demo's). Many small updates beat few large ones here: on the demo's
    synthetic set, 300 x 64 images left per-pixel shape accuracy near chance (0.45), 600 x 32
    reached 0.83 and 1200 x 16 0.93 held-out pixel accuracy (docs/demo-rounds.md);
    the demo stops at 1000 x 16 to fit its time budget. The stage is limited by its rate: at 4e-3
    the same updates reach 0.95 pixel accuracy where 2e-3 reaches 0.89, and the demo's held-out
    teacher-forced masks came out better on each of 6 seeds (docs/demo-rounds.md, ninth round)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 4e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    # weight of the centroid / size regression against the class CE (5.0 cost shape accuracy)
    geometry_weight: float = 1.0
    seed: int = 0


@dataclass
class DenseSet:
    """Images and per-pixel class maps, preprocessed like the model's inputs.

    ``pixel_values`` ``N x 3 x S x S``; ``labels`` ``N x S x S`` (0 = background, ``i`` = the
    i-th entry of ``categories``, ``IGNORE`` = padding); ``geometry`` ``N x 3 x S x S`` (half
    precision): for every object pixel its object's centroid x, y and sqrt(area), divided by S;
    ``resized_sizes`` ``N x 2``.
    """

    pixel_values: torch.Tensor
    labels: torch.Tensor
    geometry: torch.Tensor
    resized_sizes: torch.Tensor
    categories: list[int] = field(default_factory=list)

    def subset(self, index: slice | torch.Tensor) -> DenseSet:
        return DenseSet(self.pixel_values[index], self.labels[index], self.geometry[index],
                        self.resized_sizes[index], self.categories)

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


def dense_set_from_muse(path: str | Path, image_processor, image_root: str | Path | None = None,
                        max_images: int | None = None) -> DenseSet:
    """Read a MUSE-format JSON (every ``ann_list`` entry with a ``category_id`` and a
    ``segmentation``); later annotations paint over earlier ones where they overlap."""

    from pixellm.data.muse import decode_targets, load_muse, resolve_image_path

    records = load_muse(path)[:max_images]
    root = Path(image_root) if image_root else Path(path).parent
    cats = sorted({int(a["category_id"]) for r in records for a in r.get("ann_list", [])})
    index = {c: i + 1 for i, c in enumerate(cats)}
    s = image_processor.image_size
    pixels, labels, geometry, sizes = [], [], [], []
    for i, rec in enumerate(records):
        image_path = resolve_image_path(rec, root)
        if image_path is None or not Path(image_path).is_file():
            raise DataError(f"record {i}: image {rec.get('file_name')!r} not found", path=str(path))
        px, (h, w), (oh, ow) = image_processor.preprocess_one(image_path)
        anns = rec.get("ann_list", [])
        masks = decode_targets(anns, oh, ow, str(path), f"record {i}")
        full = np.zeros((oh, ow), np.int64)
        which = np.full((oh, ow), -1, np.int64)  # the annotation each pixel shows
        for j, (ann, m) in enumerate(zip(anns, masks)):
            full[m] = index[int(ann["category_id"])]
            which[m] = j
        if (h, w) != (oh, ow):
            full = _nearest(full, h, w)
            which = _nearest(which, h, w)
        geo = torch.zeros(3, s, s, dtype=torch.float16)
        for j in range(len(anns)):
            ys, xs = np.nonzero(which == j)
            if len(xs):
                sel = torch.from_numpy(which == j)
                values = ((xs.mean() + 0.5) / s, (ys.mean() + 0.5) / s, len(xs) ** 0.5 / s)
                for c, v in enumerate(values):
                    geo[c, :h, :w][sel] = float(v)
        lab = torch.full((s, s), IGNORE, dtype=torch.long)
        lab[:h, :w] = torch.from_numpy(full)
        pixels.append(px)
        labels.append(lab)
        geometry.append(geo)
        sizes.append((h, w))
    if not pixels:
        raise DataError("no images to pre-train the vision tower on", path=str(path))
    return DenseSet(torch.stack(pixels), torch.stack(labels), torch.stack(geometry), torch.tensor(sizes), cats)


def _nearest(array: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array.astype(np.int32)).resize((w, h), Image.NEAREST), np.int64)


class DensePixelHead(nn.Module):
    """One patch token -> K values for each of its ``p x p`` pixels: ``B x G*G x C`` ->
    ``B x K x S x S`` (a linear "pixel shuffle" head; here K = categories + background class
    logits, then the 3 geometry values)."""

    def __init__(self, dim: int, num_classes: int, patch: int) -> None:
        super().__init__()
        self.num_classes, self.patch = num_classes, patch
        self.proj = nn.Linear(dim, num_classes * patch * patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        g, p, k = int(round(n**0.5)), self.patch, self.num_classes
        x = self.proj(tokens).reshape(b, g, g, k, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, k, g * p, g * p)

    def per_patch(self, tokens: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Values ``first:last`` of the K, in the tokens' own layout: ``B x G*G x C`` ->
        ``B*G*G x (last - first) x p*p`` (no pixel shuffle; compare with :func:`to_patches`)."""
        b, n, _ = tokens.shape
        rows = slice(first * self.patch**2, last * self.patch**2)
        out = F.linear(tokens, self.proj.weight[rows], self.proj.bias[rows])
        return out.reshape(b * n, last - first, self.patch**2)


def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``B x [K x] S x S`` -> ``B*G*G x [K x] p*p``: each patch's pixels, row-major, in the order
    of :meth:`DensePixelHead.per_patch` (G = S / p)."""
    b, s = x.shape[0], x.shape[-1]
    g = s // patch
    lead = x.shape[1:-2]
    x = x.reshape(b, *lead, g, patch, g, patch)
    k = len(lead)  # 0 or 1
    order = (0, k + 1, k + 3, *range(1, k + 1), k + 2, k + 4)
    return x.permute(order).reshape(b * g * g, *lead, patch * patch)


def dense_loss(head: DensePixelHead, tokens: torch.Tensor, labels: torch.Tensor, geometry: torch.Tensor,
               geometry_weight: float) -> torch.Tensor:
    """Stage 1's loss for one layer: per-pixel class CE plus ``geometry_weight`` x the MSE of the
    centroid / size values over object pixels. ``labels`` / ``geometry`` come from
    :func:`to_patches`: the loss is computed per patch, where the head's output lies, so that
    neither the logits nor their gradients are shuffled into the image layout and back (the
    stage's step 88 against 92 ms, docs/demo-rounds.md)."""
    k = head.num_classes - 3
    loss = F.cross_entropy(head.per_patch(tokens, 0, k), labels, ignore_index=IGNORE)
    objects = (labels > 0)[:, None].to(geometry.dtype)
    count = objects.sum() * 3
    if count > 0:
        err = head.per_patch(tokens, k, k + 3) - geometry
        loss = loss + geometry_weight * (err.square() * objects).sum() / count
    return loss


@dataclass
class VisionPretrainResult:
    losses: list[float]
    seconds: float
    pixel_accuracy: float | None = None  # held-out foreground pixels classified right
    config: dict[str, Any] = field(default_factory=dict)


def _features(tower, pixel_values, resized_sizes, select_layers, pos_interpolation, image_size):
    from pixellm.conventions import grid_valid_mask
    from pixellm.model.vision import clip_multiscale_features

    grid = image_size // tower.config.patch_size
    valid = grid_valid_mask(resized_sizes, image_size, grid)
    return clip_multiscale_features(tower, pixel_values, valid, select_layers, pos_interpolation)


def pretrain_vision_tower(
    tower: nn.Module,
    data: DenseSet,
    select_layers: list[int],
    cfg: VisionPretrainConfig = VisionPretrainConfig(),
    pos_interpolation: str = "correct",
    held_out: DenseSet | None = None,
    progress: bool = False,
) -> VisionPretrainResult:
    """Train ``tower`` (a ``CLIPVisionModel``) in place to classify every pixel from its patch
    token at each of ``select_layers``; the heads are thrown away afterwards and the tower is
    left frozen (``requires_grad=False``) in eval mode."""
    from tqdm.auto import tqdm

    image_size = data.pixel_values.shape[-1]
    patch = tower.config.patch_size
    k = len(data.categories) + 1
    heads = nn.ModuleList(DensePixelHead(tower.config.hidden_size, k + 3, patch) for _ in select_layers)
    params = list(tower.parameters()) + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    tower.train()
    opt = adamw(params, cfg.lr, (0.9, 0.95), cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1.0 - s / cfg.steps)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="vision pre-training", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        feats = _features(tower, data.pixel_values[idx], data.resized_sizes[idx], select_layers,
                          pos_interpolation, image_size)
        target, geometry = to_patches(data.labels[idx], patch), to_patches(data.geometry[idx].float(), patch)
        loss = sum(dense_loss(head, f, target, geometry, cfg.geometry_weight) for f, head in zip(feats, heads))
        loss = loss / len(heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - t0
    for p in tower.parameters():
        p.requires_grad_(False)
    tower.eval()
    acc = None
    if held_out is not None:
        # in batches (1000 images at once: 3.0-3.3 against 1.9-2.1 s; see FEATURE_BATCH)
        b = FEATURE_BATCH
        with torch.no_grad():
            pred = torch.cat([
                heads[0](_features(tower, held_out.pixel_values[i : i + b], held_out.resized_sizes[i : i + b],
                                   select_layers[:1], pos_interpolation, image_size)[0])[:, :k].argmax(1)
                for i in range(0, len(held_out), b)
            ])
        fg = held_out.labels > 0
        acc = float((pred[fg] == held_out.labels[fg]).float().mean()) if bool(fg.any()) else None
    return VisionPretrainResult(losses, seconds, acc, asdict(cfg))


def tower_features(model, pixel_values: torch.Tensor, resized_sizes: torch.Tensor,
                   batch_size: int = FEATURE_BATCH) -> list[torch.Tensor]:
    """``clip_multiscale_features`` of ``model``'s tower at its selected layers over a whole set,
    in batches, without gradients: one ``N x tokens x C`` tensor per layer. Batches of 64: at 256
    the tiny tower's MLP activations (256 x 65 x 512 floats, 34 MB) pass glibc's 32 MB mmap limit,
    so every one is a fresh mapping whose pages fault in (4000 images: 4.8 s instead of 7.2-8.5 s,
    docs/demo-rounds.md)."""
    cfg = model.config
    parts = []
    with torch.no_grad():
        for i in range(0, len(pixel_values), batch_size):
            px, rs = pixel_values[i : i + batch_size], resized_sizes[i : i + batch_size]
            parts.append(_features(model.vision_tower, px, rs, cfg.vision_select_layers, cfg.pos_interpolation,
                                   cfg.image_size))
    return [torch.cat([p[n] for p in parts]) for n in range(len(cfg.vision_select_layers))]


def llm_grid_features(model, pixel_values: torch.Tensor | None = None, resized_sizes: torch.Tensor | None = None,
                      features: torch.Tensor | None = None) -> torch.Tensor:
    """What the LLM reads of each image before the projector (``model.llm_grid`` of the first
    selected layer), flattened: ``N x g*g*C``; from the images, or from that layer's
    :func:`tower_features` when given."""
    if features is None:
        features = tower_features(model, pixel_values, resized_sizes)[0]
    with torch.no_grad():
        return model.llm_grid(features).flatten(1)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, ridge: float = 100.0) -> float:
    """Ridge-regression probe (one-hot targets, standardised features): held-out accuracy.

    Solved in the dual (an n x n system for n training rows) because the LLM grid has more
    features than there are probe images (8 x 8 x 128 = 8192 with an 8 x 8 grid)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    classes = int(max(train_y.max(), test_y.max())) + 1
    y = F.one_hot(train_y, classes).float()
    kernel = a @ a.T + ridge * torch.eye(a.shape[0])
    alpha = torch.linalg.solve(kernel, y)
    return float(((b @ a.T @ alpha).argmax(1) == test_y).float().mean())


def save_pretrained_tower(tower: nn.Module, folder: str | Path, result: VisionPretrainResult,
                          fingerprint: dict[str, Any], summary: dict[str, Any] | None = None) -> Path:
    """Write the tower as a CLIP vision folder plus ``vision_pretrain.json`` (recipe, losses,
    fingerprint of data and model). The JSON is written last, so its presence marks a complete
    folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_FILE).unlink(missing_ok=True)
    tower.save_pretrained(str(folder))
    info = {"fingerprint": fingerprint, "summary": summary or {}, **asdict(result)}
    tmp = folder / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    tmp.replace(folder / RESULT_FILE)
    return folder


def cached_result(folder: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved stage-1 result in ``folder`` if it is complete and was made from the same data,
    model config and recipe (``fingerprint``); otherwise None."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # compare as JSON sees it (tuples in a config become lists once saved)
    return info if info.get("fingerprint") == json.loads(json.dumps(fingerprint)) else None
