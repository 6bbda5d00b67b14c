"""Training data for the trainer: samples of every source, encoded lazily, drawn by a fixed plan.

- :class:`EncodedDataset` turns ``Sample``s into processor encodings; a bad sample (missing or
  unreadable image, malformed masks, wrong ``{seg}`` count) is replaced by the next good one and
  reported (never crashes a long run).
- :func:`sampling_plan` fixes, before training starts, which sample every process sees at every
  micro-step: sources drawn by their rates (released mix: sem_seg 2, refer_seg 9, vqa 2,
  multi_reason_seg 4), each source walked in a seeded per-epoch permutation. Because the plan is
  a pure function of (seed, sizes, rates), resuming needs only the micro-step counter, and
  DataLoader workers can prefetch freely.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pixellm.data.collate import collate
from pixellm.data.sample import Sample
from pixellm.errors import ConfigError, DataError, InputError
from pixellm.train.config import DataSource

if TYPE_CHECKING:
    from pixellm.processing.processing_pixellm import PixelLMProcessor

MAX_RETRIES = 16


@dataclass
class Skip:
    """A sample that could not be used: why, and where it came from."""

    reason: str
    where: str


def load_source(source: DataSource, rng: random.Random) -> tuple[list[Sample], Counter]:
    """Samples of one configured data set (``rng`` picks instruction paraphrases)."""
    from pixellm.data.muse import muse_samples
    from pixellm.data.vqa import vqa_samples

    if source.kind == "vqa":
        return vqa_samples(source.path, source.image_root, source=source.name)
    return muse_samples(source.path, source.image_root, rng=rng, source=source.name)


class EncodedDataset(Dataset):
    """Samples of several sources, concatenated; ``__getitem__`` encodes one with the processor.

    Returns the encoding dict plus ``skips``: a list of :class:`Skip` for bad samples that were
    replaced by the following ones (within the same source).
    """

    def __init__(self, sources: Sequence[list[Sample]], processor: PixelLMProcessor, names: Sequence[str] = ()):
        self.sources = [list(s) for s in sources]
        self.names = list(names) or [f"source{i}" for i in range(len(self.sources))]
        self.processor = processor
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        if any(len(s) == 0 for s in self.sources):
            empty = [n for n, s in zip(self.names, self.sources) if not s]
            raise ConfigError(f"training data set(s) {empty} have no usable samples")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        src = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return src, index - int(self.offsets[src])

    def encode(self, sample: Sample) -> dict[str, Any]:
        from pixellm.processing.image_processing import load_image

        image = load_image(sample.image_path)
        masks = sample.load_masks()
        return self.processor.encode_example(image, sample.question, sample.answer, masks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        src, local = self.locate(int(index))
        samples = self.sources[src]
        skips: list[Skip] = []
        for attempt in range(MAX_RETRIES):
            sample = samples[(local + attempt) % len(samples)]
            try:
                example = self.encode(sample)
            except (DataError, InputError, FileNotFoundError, OSError, ValueError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                skips.append(Skip(f"{type(err).__name__}: {msg}"[:200], sample.where()))
                continue
            example["skips"] = skips
            return example
        raise DataError(f"{MAX_RETRIES} consecutive bad samples in {self.names[src]} (last: {skips[-1].reason})")


def collate_train(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded training batch; ``skips`` collects the replaced bad samples."""
    skips = [s for e in examples for s in e.get("skips", ())]
    batch = collate([{k: v for k, v in e.items() if k != "skips"} for e in examples], pad_token_id, "right")
    batch.pop("skipped", None)
    for key in ("num_targets", "truncated"):
        batch.pop(key, None)
    batch["skips"] = skips
    return batch


def sampling_plan(
    sizes: Sequence[int], rates: Sequence[float], total: int, seed: int
) -> np.ndarray:
    """``total`` global sample indices (into the concatenated sources).

    Each draw picks a source with probability proportional to its rate, then the next index of
    that source's current seeded permutation (a new permutation every pass), so every sample of a
    source is seen once per pass.
    """
    if len(sizes) != len(rates) or not sizes:
        raise ConfigError("sampling_plan: need one rate per source")
    if any(n <= 0 for n in sizes):
        raise ConfigError(f"sampling_plan: empty source in sizes {list(sizes)}")
    rng = np.random.default_rng([int(seed), 7919])
    p = np.asarray(rates, dtype=float)
    p = p / p.sum()
    choice = rng.choice(len(sizes), size=total, p=p)
    offsets = np.cumsum([0, *sizes])
    out = np.empty(total, dtype=np.int64)
    for s, n in enumerate(sizes):
        where = np.nonzero(choice == s)[0]
        passes = -(-len(where) // n) if len(where) else 0
        order = np.concatenate([rng.permutation(n) for _ in range(passes)]) if passes else np.empty(0, np.int64)
        out[where] = order[: len(where)] + offsets[s]
    return out


def rank_batches(plan: np.ndarray, batch_size: int, world: int, rank: int, start: int = 0) -> list[list[int]]:
    """Micro-batches of this process from micro-step ``start`` on: micro-step ``i`` uses plan
    entries ``[i*B*W + rank*B, ... + B)`` (``B`` = per-process batch, ``W`` = processes)."""
    per_step = batch_size * world
    steps = len(plan) // per_step
    return [
        plan[i * per_step + rank * batch_size : i * per_step + (rank + 1) * batch_size].tolist()
        for i in range(start, steps)
    ]


def build_training_data(
    sources: Sequence[DataSource], processor: PixelLMProcessor, seed: int
) -> tuple[EncodedDataset, list[float], Counter]:
    """Dataset over every configured source, their rates, and the records skipped while reading."""
    if not sources:
        raise ConfigError("train config data: no training data set configured")
    rng = random.Random(seed)
    loaded, skipped = [], Counter()
    for src in sources:
        samples, bad = load_source(src, rng)
        loaded.append(samples)
        skipped.update({f"{src.name}:{k}": v for k, v in bad.items()})
    dataset = EncodedDataset(loaded, processor, [s.name for s in sources])
    return dataset, [s.rate for s in sources], skipped


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "gt_masks":
            out[k] = [m.to(device, non_blocking=True) for m in v]
        else:
            out[k] = v
    return out
