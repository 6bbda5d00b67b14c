"""``MixedSampler``: draw training samples from several data sets by sampling rates.

Each draw picks a data set with probability proportional to its rate (released mix:
sem_seg 2, refer_seg 9, vqa 2, multi_reason_seg 4), then the next index of that data set's
seeded permutation (a fresh permutation each pass, so every sample of a set is seen once per
pass). The sequence of an epoch is a pure function of ``(seed, epoch, sizes, rates)``, which
makes ``state_dict()`` / ``load_state_dict()`` resume the exact sequence. Indices point into
``torch.utils.data.ConcatDataset(datasets)`` in the given order. With ``world_size > 1`` every
rank takes every ``world_size``-th draw of the same global sequence (padded to a multiple of
``world_size`` by repeating its first draws), like ``DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from pixellm.errors import ConfigError

RELEASED_RATES: dict[str, float] = {"sem_seg": 2.0, "refer_seg": 9.0, "vqa": 2.0, "multi_reason_seg": 4.0}


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
        num_samples: draws per epoch over all ranks (e.g. ``steps * global batch``).
        seed: base seed; the epoch (``set_epoch``) is mixed in.
        rank, world_size: this process's share of the global sequence.
    """

    def __init__(
        self,
        sizes: Sequence[int] | Mapping[str, int],
        rates: Sequence[float] | Mapping[str, float],
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.names, self.sizes, self.rates = _align(sizes, rates)
        if num_samples <= 0:
            raise ConfigError(f"num_samples must be positive, got {num_samples}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples, self.seed, self.rank, self.world_size = int(num_samples), int(seed), rank, world_size
        self.offsets = np.cumsum([0, *self.sizes])[:-1]
        self.epoch = 0
        self._start = 0  # first position of the next iteration (set by load_state_dict)
        self._position = 0  # draws handed out so far in this epoch (this rank)

    @classmethod
    def from_datasets(
        cls, datasets: Mapping[str, Any], rates: Mapping[str, float], num_samples: int, **kwargs: Any
    ) -> MixedSampler:
        """Sampler for ``ConcatDataset(list(datasets.values()))``, rates matched by name."""
        return cls({n: len(d) for n, d in datasets.items()}, rates, num_samples, **kwargs)

    def global_plan(self, epoch: int) -> np.ndarray:
        """All ranks' draws of one epoch: global indices, length padded to a multiple of world size."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        total = self.num_samples
        p = np.asarray(self.rates) / sum(self.rates)
        choice = rng.choice(len(self.sizes), size=total, p=p)
        out = np.empty(total, dtype=np.int64)
        for s, n in enumerate(self.sizes):
            where = np.nonzero(choice == s)[0]
            if not len(where):
                continue
            passes = -(-len(where) // n)
            order = np.concatenate([rng.permutation(n) for _ in range(passes)])
            out[where] = order[: len(where)] + self.offsets[s]
        # Pad by wrapping around (as DistributedSampler does): the unpadded plan is a prefix.
        padded = -(-total // self.world_size) * self.world_size
        return np.concatenate([out, out[: padded - total]])

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        plan = self.global_plan(self.epoch)[self.rank :: self.world_size]
        start, self._start = self._start, 0
        for k in range(start, len(plan)):
            self._position = k + 1
            yield int(plan[k])

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a different sequence per epoch) from its beginning."""
        self.epoch, self._start, self._position = int(epoch), 0, 0

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
            "sizes": list(self.sizes),
            "rates": list(self.rates),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next iteration starts right after its position."""
        for key in ("seed", "num_samples", "world_size", "sizes", "rates"):
            if key in state and list(np.atleast_1d(state[key])) != list(np.atleast_1d(getattr(self, key))):
                raise ConfigError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ConfigError(f"sampler state position {position} outside 0..{len(self)}")
        self.epoch, self._start, self._position = int(state["epoch"]), position, position
