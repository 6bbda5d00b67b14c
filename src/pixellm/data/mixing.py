"""``MixedSampler``: draw training samples from several data sets by sampling rates.

The global plan of an epoch is fixed before training starts and is a pure function of
``(seed, epoch, sizes, rates, num_samples)``: each draw picks a data set with probability
proportional to its rate (released mix: sem_seg 2, refer_seg 9, vqa 2, multi_reason_seg 4), then
the next index of that data set's seeded permutation (a fresh permutation each pass, so every
sample of a set is seen once per pass). Resuming therefore needs only a position (the trainer's
micro-step counter), and DataLoader workers can prefetch freely. Indices point into the
concatenated data sets in the given order (``SegmentationDataset``, ``ConcatDataset``).

Rank split: global micro-step ``i`` uses plan entries ``[i*B*W, (i+1)*B*W)``; rank ``r`` takes
``[i*B*W + r*B, i*B*W + (r+1)*B)`` (``B`` = per-process batch, ``W`` = processes). The plan is
padded to a multiple of ``B*W`` by repeating its first draws (as ``DistributedSampler`` does).
Use it as ``DataLoader(dataset, sampler=s, batch_size=B)``.

Length grouping (``lengths``, HF's ``group_by_length``): every run of ``GROUP_STEPS`` global
micro-steps of the plan is sorted by sample length and cut into micro-steps again, whose order
within the run is then shuffled. A batch is padded to its longest sample, so similar lengths in
one micro-step mean less padding (the synthetic demo: ~24% of the LLM's tokens were padding).
The same draws are used, only regrouped; the plan stays a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from pixellm.errors import ConfigError

RELEASED_RATES: dict[str, float] = {"sem_seg": 2.0, "refer_seg": 9.0, "vqa": 2.0, "multi_reason_seg": 4.0}
# Mixed into the plan's seed; epoch 0 keeps the plans (and so the results) of earlier runs.
_PLAN_SALT = 7919
# Micro-steps per length-sorted run (HF Trainer's megabatch is 50 batches).
GROUP_STEPS = 50


def _align(sizes: Sequence[int] | Mapping[str, int], rates: Sequence[float] | Mapping[str, float]):
    """``(names, sizes, rates)`` as lists; mappings are matched by name (order of ``sizes``)."""
    if isinstance(sizes, Mapping):
        names = list(sizes)
        if isinstance(rates, Mapping):
            missing = [n for n in names if n not in rates]
            if missing:
                raise ConfigError(f"no sampling rate for data set(s) {missing}")
            rates = [rates[n] for n in names]
        sizes = [sizes[n] for n in names]
    else:
        names = [str(i) for i in range(len(sizes))]
        if isinstance(rates, Mapping):
            raise ConfigError("rates given by name need sizes given by name")
    sizes, rates = [int(s) for s in sizes], [float(r) for r in rates]
    if len(sizes) != len(rates) or not sizes:
        raise ConfigError(f"need one sampling rate per data set, got {len(rates)} rates for {len(sizes)} sets")
    if any(r < 0 for r in rates) or sum(rates) <= 0:
        raise ConfigError(f"sampling rates must be >= 0 with a positive sum, got {rates}")
    empty = [n for n, s, r in zip(names, sizes, rates) if r > 0 and s <= 0]
    if empty:
        raise ConfigError(f"data set(s) {empty} are empty but have a positive sampling rate")
    return names, sizes, rates


class MixedSampler(Sampler[int]):
    """Seeded, resumable, rank-aware sampler over concatenated data sets.

    Args:
        sizes: length of each data set (sequence, or mapping name -> length).
        rates: sampling rate of each data set (same order, or mapping by name).
        num_samples: draws per epoch over all ranks (e.g. ``steps * accumulation * B * W``).
        batch_size: per-process micro-batch ``B``: ranks take blocks of ``B`` draws.
        seed: base seed; the epoch (``set_epoch``) is mixed in.
        rank, world_size: this process's share of the global plan.
        lengths: one length per sample (global index order, e.g. token counts); group each
            micro-step's draws by length (module docstring). ``None``: no grouping.
    """

    def __init__(
        self,
        sizes: Sequence[int] | Mapping[str, int],
        rates: Sequence[float] | Mapping[str, float],
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        lengths: Sequence[int] | np.ndarray | None = None,
    ):
        self.names, self.sizes, self.rates = _align(sizes, rates)
        if lengths is not None and len(lengths) != sum(self.sizes):
            raise ConfigError(f"lengths: {len(lengths)} values for {sum(self.sizes)} samples")
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        if num_samples <= 0:
            raise ConfigError(f"num_samples must be positive, got {num_samples}")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.rank, self.world_size, self.batch_size = int(rank), int(world_size), int(batch_size)
        self.offsets = np.cumsum([0, *self.sizes])[:-1]
        self.epoch = 0
        self._start = 0  # first position of the next iteration (set_epoch / load_state_dict)
        self._position = 0  # draws handed out so far in this epoch (this rank)

    def global_plan(self, epoch: int) -> np.ndarray:
        """All ranks' draws of one epoch: global indices, length padded to a multiple of ``B*W``."""
        rng = np.random.default_rng([self.seed, _PLAN_SALT + int(epoch)])
        total = self.num_samples
        p = np.asarray(self.rates, dtype=float)
        p = p / p.sum()
        choice = rng.choice(len(self.sizes), size=total, p=p)
        out = np.empty(total, dtype=np.int64)
        for s, n in enumerate(self.sizes):
            where = np.nonzero(choice == s)[0]
            if not len(where):
                continue
            passes = -(-len(where) // n)
            order = np.concatenate([rng.permutation(n) for _ in range(passes)])
            out[where] = order[: len(where)] + self.offsets[s]
        step = self.batch_size * self.world_size
        if self.lengths is not None:
            out = _group_by_length(out, self.lengths, step, rng)
        # Pad by wrapping around (as DistributedSampler does): the unpadded plan is a prefix.
        padded = -(-total // step) * step
        return np.concatenate([out, np.resize(out, padded - total)])

    def rank_plan(self, epoch: int) -> np.ndarray:
        """This rank's draws of one epoch: its block of ``B`` from every global micro-step."""
        b, w = self.batch_size, self.world_size
        steps = self.global_plan(epoch).reshape(-1, w, b)
        return steps[:, self.rank].reshape(-1)

    def __len__(self) -> int:
        """Draws of this rank in a whole epoch (a resumed first iteration yields fewer)."""
        step = self.batch_size * self.world_size
        return -(-self.num_samples // step) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        plan = self.rank_plan(self.epoch)
        start, self._start = self._start, 0
        for k in range(start, len(plan)):
            self._position = k + 1
            yield int(plan[k])

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Start epoch ``epoch`` (a different plan per epoch) at this rank's draw ``start``
        (micro-step ``start // B``); only the next iteration starts there."""
        if not 0 <= start <= len(self):
            raise ConfigError(f"sampler start {start} outside 0..{len(self)}")
        self.epoch, self._start, self._position = int(epoch), int(start), int(start)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where this rank is. ``consumed``: samples this rank actually trained on this epoch.

        A DataLoader prefetches, so the sampler has usually handed out more indices than the
        trainer used; pass the trainer's own count to resume exactly after the last used one.
        """
        return {
            "epoch": self.epoch,
            "position": self._position if consumed is None else int(consumed),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "sizes": list(self.sizes),
            "rates": list(self.rates),
            "grouped_by_length": self.lengths is not None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next iteration starts right after its position."""
        grouped = self.lengths is not None
        if bool(state.get("grouped_by_length", False)) != grouped:
            raise ConfigError(f"sampler state has grouped_by_length={not grouped}, this sampler {grouped}")
        for key in ("seed", "num_samples", "world_size", "batch_size", "sizes", "rates"):
            if key in state and list(np.atleast_1d(state[key])) != list(np.atleast_1d(getattr(self, key))):
                raise ConfigError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        self.set_epoch(int(state["epoch"]), int(state["position"]))


def _group_by_length(plan: np.ndarray, lengths: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """``plan`` with each run of ``GROUP_STEPS * step`` draws sorted by length, cut into
    micro-steps of ``step`` draws, and those micro-steps shuffled within the run."""
    out = plan.copy()
    run = GROUP_STEPS * step
    for start in range(0, len(plan), run):
        chunk = plan[start:start + run]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        n_full = len(chunk) // step
        order = rng.permutation(n_full)
        full = chunk[: n_full * step].reshape(n_full, step)[order].reshape(-1)
        out[start:start + run] = np.concatenate([full, chunk[n_full * step:]])
    return out
