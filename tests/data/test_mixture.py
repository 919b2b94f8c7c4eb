"""Epoch plans, rank slices and the resumable sampler (pure functions: exact expected arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from panda.data.mixture import MixtureSampler, batches_per_rank, epoch_plan, rank_batch, source_quota


def test_plan_counts_follow_repetition_factors():
    plan = epoch_plan([10, 4, 6], [1.0, 2.5, 0.0], seed=0, epoch=0)
    source = np.searchsorted([0, 10, 14, 20], plan, side="right") - 1
    assert np.bincount(source, minlength=3).tolist() == [10, 10, 0]
    counts = np.bincount(plan, minlength=20)
    assert counts[:10].tolist() == [1] * 10  # weight 1: every row once
    assert sorted(counts[10:14].tolist()) == [2, 2, 3, 3]  # 2 full passes + 2 distinct extra rows
    assert counts[14:].tolist() == [0] * 6


def test_plan_is_a_pure_function_of_seed_and_epoch():
    a = epoch_plan([50, 30], [1.0, 0.5], seed=3, epoch=1)
    assert np.array_equal(a, epoch_plan([50, 30], [1.0, 0.5], seed=3, epoch=1))
    assert not np.array_equal(a, epoch_plan([50, 30], [1.0, 0.5], seed=3, epoch=2))
    assert not np.array_equal(a, epoch_plan([50, 30], [1.0, 0.5], seed=4, epoch=1))
    # the fractional half is redrawn each epoch, the size stays the same
    plans = [epoch_plan([50, 30], [1.0, 0.5], seed=3, epoch=e) for e in (1, 2)]
    half = [np.unique(p[p >= 50]) for p in plans]
    assert len(half[0]) == len(half[1]) == 15 and not np.array_equal(half[0], half[1])


def test_unshuffled_plan_keeps_order():
    assert epoch_plan([3, 2], [1.0, 1.0], seed=0, epoch=5, shuffle=False).tolist() == [0, 1, 2, 3, 4]


def test_realized_mix_within_one_percent_of_weights():
    rows, weights = [12_345, 3_210, 777], [1.0, 3.7, 0.35]
    plan = epoch_plan(rows, weights, seed=11, epoch=0)
    source = np.searchsorted(np.cumsum([0] + rows), plan, side="right") - 1
    realized = np.bincount(source, minlength=3) / len(plan)
    target = np.array(rows) * weights / np.dot(rows, weights)
    assert np.all(np.abs(realized - target) < 0.01)
    assert len(plan) == sum(source_quota(n, w) for n, w in zip(rows, weights))


def test_ranks_get_disjoint_equal_strided_blocks_with_wraparound():
    plan = np.arange(10)
    assert batches_per_rank(10, batch_size=2, world_size=2) == 3
    rank0 = [rank_batch(plan, i, 2, 2, 0).tolist() for i in range(3)]
    rank1 = [rank_batch(plan, i, 2, 2, 1).tolist() for i in range(3)]
    assert rank0 == [[0, 1], [4, 5], [8, 9]]
    assert rank1 == [[2, 3], [6, 7], [0, 1]]  # last global batch completed from the plan's start
    # single-process validation keeps a short last batch instead
    assert batches_per_rank(10, batch_size=4, world_size=1, pad=False) == 3
    assert rank_batch(plan, 2, 4, 1, 0, pad=False).tolist() == [8, 9]


def test_sampler_resumes_at_the_next_batch_and_len_is_constant():
    def sampler():
        return MixtureSampler([40, 9], [1.0, 2.5], batch_size=3, seed=7, rank=1, world_size=2)

    full = sampler()
    full.set_epoch(1)
    expected = [b.tolist() for b in full]
    assert len(expected) == len(full) == 11  # ceil((40 + 22) / 6)
    state = full.state_dict(consumed=4)
    assert state == {"epoch": 1, "consumed": 4}
    resumed = sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # Lightning calls this with the same epoch after restoring: no reset
    assert [b.tolist() for b in resumed] == expected[4:]
    assert len(resumed) == 11
    assert [b.tolist() for b in resumed] == expected  # a finished resumed epoch re-iterates from its start
    resumed.set_epoch(2)
    assert len(list(resumed)) == 11


def test_sampler_state_rolls_over_at_epoch_end():
    s = MixtureSampler([8], [1.0], batch_size=2)
    assert s.state_dict(consumed=len(s)) == {"epoch": 1, "consumed": 0}


def test_bad_weights_and_ranks_are_refused():
    with pytest.raises(ValueError, match="weight"):
        epoch_plan([3], [-1.0], seed=0, epoch=0)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        MixtureSampler([3], [1.0], batch_size=1, rank=2, world_size=2)
