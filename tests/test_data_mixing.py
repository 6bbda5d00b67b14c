"""MixedSampler: rates, passes, resume, epochs, ranks, DataLoader."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from pixellm.data.mixing import RELEASED_RATES, MixedSampler
from pixellm.errors import ConfigError

SIZES = {"sem_seg": 50, "refer_seg": 300, "vqa": 20, "multi_reason_seg": 80}


def which(index: int) -> str:
    edges = np.cumsum(list(SIZES.values()))
    return list(SIZES)[int(np.searchsorted(edges, index, side="right"))]


def test_rates_within_tolerance():
    n = 17_000
    drawn = Counter(which(i) for i in MixedSampler(SIZES, RELEASED_RATES, n, seed=1))
    total = sum(RELEASED_RATES.values())
    for name, rate in RELEASED_RATES.items():
        assert abs(drawn[name] / n - rate / total) < 0.01, (name, drawn)


def test_each_pass_covers_a_data_set_once():
    s = MixedSampler({"a": 7, "b": 5}, {"a": 1, "b": 1}, 400, seed=0)
    b = [i - 7 for i in s if i >= 7]
    for start in range(0, len(b) - 5, 5):  # consecutive passes over "b": permutations of 0..4
        assert sorted(b[start : start + 5]) == list(range(5))


def test_resume_continues_the_exact_sequence():
    s = MixedSampler(SIZES, RELEASED_RATES, 500, seed=3)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(123)]
    state = s.state_dict()
    assert state["position"] == 123 and state["epoch"] == 2
    resumed = MixedSampler(SIZES, RELEASED_RATES, 500, seed=3)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    assert len(list(resumed)) == 500  # afterwards the epoch starts from the beginning again
    # With a prefetching loader the trainer passes what it really consumed.
    again = MixedSampler(SIZES, RELEASED_RATES, 500, seed=3)
    again.load_state_dict(s.state_dict(consumed=100))
    assert list(again) == full[100:]
    with pytest.raises(ConfigError, match="seed"):
        MixedSampler(SIZES, RELEASED_RATES, 500, seed=4).load_state_dict(state)


def test_epochs_seeds_and_ranks():
    s = MixedSampler(SIZES, RELEASED_RATES, 101, seed=0)
    e0 = list(s)
    assert list(s) == e0  # same epoch, same sequence
    s.set_epoch(1)
    assert list(s) != e0
    assert list(MixedSampler(SIZES, RELEASED_RATES, 101, seed=9)) != e0
    ranks = [list(MixedSampler(SIZES, RELEASED_RATES, 101, seed=0, rank=r, world_size=4)) for r in range(4)]
    assert all(len(r) == 26 for r in ranks)  # padded to a multiple of the world size
    interleaved = [ranks[k % 4][k // 4] for k in range(104)]
    assert interleaved == MixedSampler(SIZES, RELEASED_RATES, 101, seed=0, world_size=4).global_plan(0).tolist()
    assert interleaved[:101] == e0


def test_works_with_a_dataloader():
    sets = {name: TensorDataset(torch.arange(n) + 1000 * k) for k, (name, n) in enumerate(SIZES.items())}
    sampler = MixedSampler.from_datasets(sets, RELEASED_RATES, num_samples=64, seed=5)
    loader = DataLoader(ConcatDataset(list(sets.values())), sampler=sampler, batch_size=8)
    values = torch.cat([b[0] for b in loader]).tolist()
    concat = [v for d in sets.values() for v in d.tensors[0].tolist()]
    assert values == [concat[i] for i in MixedSampler(SIZES, RELEASED_RATES, 64, seed=5)]


def test_bad_configuration():
    with pytest.raises(ConfigError, match=r"empty but have a positive sampling rate"):
        MixedSampler({"a": 0, "b": 3}, {"a": 1, "b": 1}, 10)
    assert len(MixedSampler({"a": 0, "b": 3}, {"a": 0, "b": 1}, 10)) == 10  # rate 0: unused
    with pytest.raises(ConfigError, match=r"no sampling rate for data set\(s\) \['b'\]"):
        MixedSampler({"a": 2, "b": 3}, {"a": 1}, 10)
    with pytest.raises(ConfigError, match="rank"):
        MixedSampler([2], [1], 10, rank=2, world_size=2)
