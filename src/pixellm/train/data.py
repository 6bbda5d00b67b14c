"""Training data for the trainer: the configured sources read into one dataset, batch collation.

The dataset (bad samples replaced by the next good one and reported) is
``pixellm.data.dataset.SegmentationDataset``; the sampling plan (sources drawn by their rates,
fixed before training, split across processes, resumable from the micro-step counter) is
``pixellm.data.mixing.MixedSampler``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixellm.conventions import expand_seg
from pixellm.data.dataset import SegmentationDataset, skipped_report
from pixellm.data.sample import Sample, pack_conversations
from pixellm.errors import ConfigError
from pixellm.processing.collate import collate
from pixellm.train.config import DataSource

if TYPE_CHECKING:
    from pixellm.processing.processing_pixellm import PixelLMProcessor

logger = logging.getLogger(__name__)


def load_source(source: DataSource, rng: random.Random, instruction: bool = True) -> tuple[list[Sample], Counter]:
    """Samples of one configured data set (``rng`` picks instruction paraphrases; none with
    ``instruction=False``), questions packed into conversations of ``source.pack_turns``."""
    from pixellm.data.muse import muse_samples
    from pixellm.data.vqa import vqa_samples

    if source.kind == "vqa":
        samples, bad = vqa_samples(source.path, source.image_root, source=source.name,
                                   allow_outside_root=source.allow_outside_root)
    else:
        samples, bad = muse_samples(source.path, source.image_root, rng=rng, source=source.name,
                                    allow_outside_root=source.allow_outside_root, instruction=instruction)
    samples = pack_conversations(samples, source.pack_turns)
    if not source.masks:
        samples = [dataclasses.replace(s, supervise_masks=False) for s in samples]
    return samples, bad


def collate_train(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded training batch; ``skips`` collects the replaced bad samples (``Skip``s)."""
    skips = [s for e in examples for s in e.get("skips", ())]
    batch = collate([{k: v for k, v in e.items() if k != "skips"} for e in examples], pad_token_id, "right")
    batch.pop("skipped", None)
    for key in ("num_targets", "truncated"):
        batch.pop(key, None)
    batch["skips"] = skips
    return batch


def build_training_data(
    sources: Sequence[DataSource], processor: PixelLMProcessor, seed: int, cache_bytes: int = 0
) -> tuple[SegmentationDataset, list[float]]:
    """Dataset over every configured source (records skipped while reading in
    ``dataset.read_skips``; encoded items cached up to ``cache_bytes``) and the sources'
    sampling rates. Questions carry the instruction suffix as ``processor.instruction`` says."""
    if not sources:
        raise ConfigError("train config data: no training data set configured")
    rng = random.Random(seed)
    loaded, read_skips = [], Counter()
    for src in sources:
        samples, bad = load_source(src, rng, processor.instruction)
        if bad:
            logger.warning("%s (%s): %s while reading", src.name, src.path, skipped_report(bad))
        loaded.append(samples)
        read_skips.update(bad)
    dataset = SegmentationDataset(loaded, processor.encode_example, [s.name for s in sources], read_skips,
                                  cache_bytes=cache_bytes)
    return dataset, [s.rate for s in sources]


def sample_lengths(dataset: SegmentationDataset, processor: PixelLMProcessor) -> np.ndarray:
    """Token count of each sample's questions and answers (a target's codebook group counted in
    full), in the dataset's global index order: what length grouping sorts by. The image tokens
    and the template are the same for every sample, so they are left out."""
    samples = [s for source in dataset.sources for s in source]
    tok = processor.tokenizer
    # a leading space: both follow other text in the prompt, which changes their first token
    n = processor.num_codebook_tokens
    texts = [" " + " ".join(f"{q} {expand_seg(a, n)}" for q, a in (*s.history, (s.question, s.answer)))
             for s in samples]
    return np.array([len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]], dtype=np.int64)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "gt_masks":
            out[k] = [None if m is None else m.to(device, non_blocking=True) for m in v]
        else:
            out[k] = v
    return out
