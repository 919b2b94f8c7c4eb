"""Weighted mixing: which packed rows each rank trains on, in which order, and how to resume exactly.

The reference mixed corpora as ``extra[idx % len(extra)]`` (an unstated 1:1 ratio), never implemented the COIG
upsampling its authors asked for, and resumed by replaying the whole loader. Here an epoch is a *plan*: a pure
function of ``(seed, epoch, rows per source, weights)`` that lists global row ids. Everything that follows is
arithmetic on that list, so any process can recompute any batch without having seen the ones before it.

A source's ``weight`` is its per-epoch repetition factor, counted in packed rows (each row holds whole documents of
one source, see :mod:`panda.data.cache`)::

    weight 1.0   every row once per epoch (the natural mix; the default)
    weight 3.0   every row three times (upsampling, e.g. COIG in a pretraining mix)
    weight 2.5   every row twice, plus a seeded half of the rows drawn without repetition, redrawn each epoch
    weight 0.1   a seeded tenth of the rows, a different tenth each epoch

so a source's share of an epoch is ``weight * rows / sum(weight_j * rows_j)``, exact up to one row; the epoch has
the same number of rows every epoch, which is what makes ``len(train_dataloader())`` exact for every epoch.
The plan is shuffled as a whole, cut into global batches of ``world_size * batch_size`` rows, and rank ``r``
takes the ``r``-th block of ``batch_size`` rows of every global batch::

    plan (shuffled)   r0 r0 | r1 r1 | r0 r0 | r1 r1 | r0 r0 | r1 (r1)      world_size 2, batch_size 2
                      └ global batch 0 ┘└ global batch 1 ┘└ global batch 2 ┘
                                                                 (r1) = wrapped around from the plan's start

The last global batch is completed with rows from the start of the plan (as ``DistributedSampler`` does), so
every rank sees the same number of full batches and nothing is dropped. The resumable state is just
``(epoch, batches already consumed)``: restoring it starts at the next batch; nothing is replayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler

_SHUFFLE_SALT = 2**31 - 1  # keeps the whole-plan shuffle stream apart from the per-source draw streams


def source_quota(num_rows: int, weight: float) -> int:
    """Rows a source contributes to one epoch: ``round(weight * num_rows)``."""
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"mixture weight must be a finite number >= 0, got {weight}")
    return int(round(weight * num_rows))


def epoch_plan(row_counts: Sequence[int], weights: Sequence[float], seed: int, epoch: int,
               shuffle: bool = True) -> np.ndarray:
    """Global row ids of one epoch, in training order.

    Source ``i`` owns global ids ``offset_i .. offset_i + row_counts[i] - 1`` (offsets are the running sum of
    ``row_counts``). Each source contributes ``floor(weight)`` full passes over its rows plus a seeded draw without
    repetition for the fractional part (see module docstring).

    Args:
        row_counts: Packed rows per source.
        weights: Repetition factor per source.
        seed: Mixing seed (the same on every rank).
        epoch: Epoch number; fractional draws and the order change with it.
        shuffle: Shuffle the plan (training); ``False`` keeps sources and rows in order (validation).

    Returns:
        int64 array of shape ``(sum of quotas,)``.
    """
    if len(row_counts) != len(weights):
        raise ValueError(f"{len(row_counts)} row counts but {len(weights)} weights")
    offsets = np.concatenate([[0], np.cumsum(row_counts, dtype=np.int64)])
    parts = []
    for i, (rows, weight) in enumerate(zip(row_counts, weights)):
        quota = source_quota(rows, weight)
        if quota == 0:
            continue
        ids = np.arange(offsets[i], offsets[i + 1], dtype=np.int64)
        passes, rest = divmod(quota, rows)
        parts.extend([ids] * passes)
        if rest:
            rng = np.random.default_rng((seed, epoch, i))
            parts.append(np.sort(rng.choice(ids, size=rest, replace=False)))
    plan = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if shuffle:
        np.random.default_rng((seed, epoch, _SHUFFLE_SALT)).shuffle(plan)
    return plan


def batches_per_rank(plan_rows: int, batch_size: int, world_size: int, pad: bool = True) -> int:
    """Batches each rank gets from a plan of ``plan_rows`` rows.

    With ``pad`` the last global batch is completed by wrapping around (every batch full); without it (single
    process validation) the last batch may be short.
    """
    if pad or world_size > 1:
        return math.ceil(plan_rows / (batch_size * world_size))
    return math.ceil(plan_rows / batch_size)


def rank_batch(plan: np.ndarray, index: int, batch_size: int, world_size: int, rank: int,
               pad: bool = True) -> np.ndarray:
    """Global row ids of batch ``index`` on ``rank`` (see module docstring for the layout)."""
    start = (index * world_size + rank) * batch_size
    if pad or world_size > 1:
        positions = np.arange(start, start + batch_size) % len(plan)
        return plan[positions]
    return plan[start:start + batch_size]


class MixtureSampler(DistributedSampler):
    """Yields, for one rank, the global row ids of each batch of the current epoch, from the resume point on.

    Used as a DataLoader's ``sampler`` with ``batch_size=None``: each item it yields is a whole batch's row ids,
    so DataLoader workers need no state of their own (a worker reads the rows it is given). Lightning calls
    :meth:`set_epoch` at every epoch start. It is a ``DistributedSampler`` only so that Lightning sees the rank
    split is done and does not wrap it in one of its own (``use_distributed_sampler`` needs no change); none of
    ``DistributedSampler``'s code runs.

    Args:
        row_counts: Packed rows per source.
        weights: Repetition factor per source (see module docstring).
        batch_size: Rows per batch on each rank.
        seed: Mixing seed, the same on every rank.
        rank: This process's rank.
        world_size: Number of ranks.
        shuffle: Shuffle each epoch's plan (training) or keep file order (validation).
        pad: Complete the last global batch by wrapping around (always on when ``world_size > 1``).
    """

    def __init__(self, row_counts: Sequence[int], weights: Sequence[float], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, pad: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.row_counts = [int(n) for n in row_counts]
        self.weights = [float(w) for w in weights]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_replicas, self.drop_last = world_size, False  # DistributedSampler's attribute names
        self.shuffle, self.pad = shuffle, pad
        self.plan_rows = sum(source_quota(n, w) for n, w in zip(self.row_counts, self.weights))
        self.epoch = 0
        self.start = 0
        self._plan: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """Batches per epoch on this rank — the same every epoch, also on a resumed epoch (Lightning counts the
        batches already consumed itself)."""
        return batches_per_rank(self.plan_rows, self.batch_size, self.world_size, self.pad)

    def plan(self, epoch: int) -> np.ndarray:
        """The (cached) plan of ``epoch``."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, epoch_plan(self.row_counts, self.weights, self.seed, epoch, self.shuffle))
        return self._plan[1]

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Row ids of batch ``index`` of ``epoch`` on this rank."""
        return rank_batch(self.plan(epoch), index, self.batch_size, self.world_size, self.rank, self.pad)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; a restored resume point only applies to the epoch it was saved in."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        """``{"epoch", "consumed"}``; ``consumed`` defaults to the resume point (batches before it are done).

        Completed epochs roll over to ``(epoch + 1, 0)``.
        """
        consumed = self.start if consumed is None else consumed
        if consumed >= len(self):
            return {"epoch": self.epoch + 1, "consumed": 0}
        return {"epoch": self.epoch, "consumed": consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start = int(state["epoch"]), int(state["consumed"])

    def __iter__(self) -> Iterator[np.ndarray]:
        epoch, start = self.epoch, self.start
        if self.plan_rows == 0:
            return
        for index in range(start, len(self)):
            yield self.batch(epoch, index)
        if self.epoch == epoch:
            self.start = 0  # a finished resumed epoch must not shorten a re-iteration of it
