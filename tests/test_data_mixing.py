"""MixedSampler: rates, passes, determinism, resume, epochs, rank split in micro-batch blocks, DataLoader."""

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
    assert list(MixedSampler(SIZES, RELEASED_RATES, 101, seed=0)) == e0  # a pure function of its arguments
    s.set_epoch(1)
    assert list(s) != e0
    assert list(MixedSampler(SIZES, RELEASED_RATES, 101, seed=9)) != e0
    ranks = [list(MixedSampler(SIZES, RELEASED_RATES, 101, seed=0, rank=r, world_size=4)) for r in range(4)]
    assert all(len(r) == 26 for r in ranks)  # padded to a multiple of the world size
    interleaved = [ranks[k % 4][k // 4] for k in range(104)]
    assert interleaved == MixedSampler(SIZES, RELEASED_RATES, 101, seed=0, world_size=4).global_plan(0).tolist()
    assert interleaved[:101] == e0


def test_ranks_take_micro_batch_blocks_and_resume_by_micro_step():
    kw = {"seed": 2, "world_size": 2, "batch_size": 3}
    plan = MixedSampler(SIZES, RELEASED_RATES, 60, **kw).global_plan(0)
    r0, r1 = (list(MixedSampler(SIZES, RELEASED_RATES, 60, rank=r, **kw)) for r in (0, 1))
    assert len(r0) == len(r1) == 30
    # Micro-step i: rank 0 takes plan[6i : 6i+3], rank 1 plan[6i+3 : 6i+6].
    for i in range(10):
        assert r0[3 * i : 3 * i + 3] == plan[6 * i : 6 * i + 3].tolist()
        assert r1[3 * i : 3 * i + 3] == plan[6 * i + 3 : 6 * i + 6].tolist()
    resumed = MixedSampler(SIZES, RELEASED_RATES, 60, rank=1, **kw)
    resumed.set_epoch(0, start=4 * 3)  # after micro-step 4
    assert list(resumed) == r1[12:]
    # Not a multiple of B x W: padded by wrapping, the unpadded plan is a prefix.
    odd = MixedSampler(SIZES, RELEASED_RATES, 61, **kw).global_plan(0)
    assert len(odd) == 66 and odd[:61].tolist() == MixedSampler(SIZES, RELEASED_RATES, 61, seed=2).global_plan(0).tolist()
    assert odd[61:].tolist() == odd[:5].tolist()


def test_works_with_a_dataloader():
    sets = {name: TensorDataset(torch.arange(n) + 1000 * k) for k, (name, n) in enumerate(SIZES.items())}
    concat = [v for d in sets.values() for v in d.tensors[0].tolist()]
    sizes = {n: len(d) for n, d in sets.items()}
    for rank in (0, 1):
        sampler = MixedSampler(sizes, RELEASED_RATES, 64, seed=5, rank=rank, world_size=2, batch_size=8)
        loader = DataLoader(ConcatDataset(list(sets.values())), sampler=sampler, batch_size=8)
        batches = [b[0].tolist() for b in loader]
        plan = sampler.global_plan(0)
        assert batches == [[concat[i] for i in plan[16 * k + 8 * rank : 16 * k + 8 * rank + 8]] for k in range(4)]


def test_bad_configuration():
    with pytest.raises(ConfigError, match=r"empty but have a positive sampling rate"):
        MixedSampler({"a": 0, "b": 3}, {"a": 1, "b": 1}, 10)
    with pytest.raises(ConfigError, match=r"\['1'\] are empty"):
        MixedSampler([10, 0], [1, 1], 5)
    assert len(MixedSampler({"a": 0, "b": 3}, {"a": 0, "b": 1}, 10)) == 10  # rate 0: unused
    with pytest.raises(ConfigError, match=r"no sampling rate for data set\(s\) \['b'\]"):
        MixedSampler({"a": 2, "b": 3}, {"a": 1}, 10)
    with pytest.raises(ConfigError, match="rank"):
        MixedSampler([2], [1], 10, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        MixedSampler([2], [1], 10, batch_size=0)
    with pytest.raises(ConfigError, match="start"):
        MixedSampler([2], [1], 10).set_epoch(0, start=11)


def _padding(plan: np.ndarray, lengths: np.ndarray, step: int) -> float:
    """Share of a plan's padded tokens that are padding (each micro-step padded to its longest)."""
    per_step = lengths[plan[: len(plan) // step * step]].reshape(-1, step)
    return float(1 - per_step.sum() / (per_step.max(axis=1).sum() * step))


def test_length_grouping_regroups_the_same_draws_with_less_padding():
    lengths = np.random.default_rng(0).integers(20, 200, size=sum(SIZES.values()))
    n, b, w = 3000, 4, 2
    plain = MixedSampler(SIZES, RELEASED_RATES, n, seed=5, batch_size=b, world_size=w)
    grouped = MixedSampler(SIZES, RELEASED_RATES, n, seed=5, batch_size=b, world_size=w, lengths=lengths)
    p, g = plain.global_plan(0), grouped.global_plan(0)
    run = 50 * b * w  # GROUP_STEPS micro-steps: each run holds the same draws, regrouped
    for start in range(0, n, run):
        assert Counter(p[start:start + run].tolist()) == Counter(g[start:start + run].tolist())
    assert _padding(g, lengths, b * w) < 0.25 * _padding(p, lengths, b * w)
    # micro-step order is shuffled within a run, not sorted longest first
    step_max = lengths[g[:run]].reshape(-1, b * w).max(axis=1)
    assert not np.all(np.diff(step_max) <= 0)
    # ranks still take blocks of B from each global micro-step
    rank1 = MixedSampler(SIZES, RELEASED_RATES, n, seed=5, batch_size=b, world_size=w, rank=1, lengths=lengths)
    assert list(rank1)[:b] == g[b:2 * b].tolist()


def test_length_grouped_plan_resumes_and_refuses_a_mismatched_state():
    lengths = np.arange(sum(SIZES.values())) % 37
    s = MixedSampler(SIZES, RELEASED_RATES, 500, seed=3, batch_size=4, lengths=lengths)
    full = list(s)
    resumed = MixedSampler(SIZES, RELEASED_RATES, 500, seed=3, batch_size=4, lengths=lengths)
    resumed.load_state_dict(s.state_dict(consumed=120))
    assert list(resumed) == full[120:]
    with pytest.raises(ConfigError, match="grouped_by_length"):
        MixedSampler(SIZES, RELEASED_RATES, 500, seed=3, batch_size=4).load_state_dict(s.state_dict())
    with pytest.raises(ConfigError, match="lengths"):
        MixedSampler(SIZES, RELEASED_RATES, 500, lengths=[1, 2, 3])
