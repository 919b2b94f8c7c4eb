"""The training loader, resumable at any batch.

Resuming. The state is ``(epoch, batches consumed)``. The number consumed is read from the trainer's batch
progress when the checkpoint is written — not from what the sampler has yielded, which runs ahead by the
DataLoader workers' prefetch — and on restore the loader starts exactly at the next batch, so a resumed run sees the
batches an uninterrupted run would have seen, with no replay. Lightning counts the batches of a resumed epoch
itself, so ``len(loader)`` stays the full epoch length; it is exact (``batch_size`` rows per batch, every rank the
same count), and ``trainer.estimated_stepping_batches`` sizes the LR schedule from it.

DeepSpeed restores checkpoints *after* the strategy set-up, which already built the train loader (to estimate
the stepping batches) and called ``iter()`` on it; the loader therefore starts its worker iterator only at the
first ``next()``, after the restored state is in place.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from panda.data.mixture import MixtureSampler
from panda.data.rows import PackedRows


class _LazyIterator:
    """Defers the DataLoader's real iterator (and its workers' prefetch) to the first ``next()``."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader, self.iterator = loader, None

    def __iter__(self) -> _LazyIterator:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.iterator is None:
            self.loader.consumed = self.loader.sampler.start
            self.iterator = DataLoader.__iter__(self.loader)
        batch = next(self.iterator)
        self.loader.consumed += 1
        return batch


class ResumableLoader(DataLoader):
    """A DataLoader over :class:`PackedRows` driven by a :class:`MixtureSampler`, resumable at any batch.

    It implements Lightning's stateful-loader protocol (``state_dict``/``load_state_dict``); ``consumed`` counts
    the batches handed to the consumer (not the ones prefetched), used when no trainer is attached.
    """

    def __init__(self, dataset: PackedRows, sampler: MixtureSampler, num_workers: int = 0,
                 progress=None) -> None:
        super().__init__(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())
        self.consumed = sampler.start
        self._progress = progress

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return _LazyIterator(self)

    def state_dict(self) -> dict:
        consumed = self._progress() if self._progress is not None else None
        return self.sampler.state_dict(self.consumed if consumed is None else consumed)

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sampler.load_state_dict(state)
            self.consumed = self.sampler.start

