"""Packed rows of several cached sources under one global row id: the Dataset the training loader reads.

Global row ids follow the mixture's numbering (:mod:`panda.data.mixture`): entry ``i`` (a cached source, or a
held-out selection of one) owns ids ``offsets[i] .. offsets[i + 1] - 1``. An index is a whole batch's row ids,
so DataLoader workers need no state: a worker reads the rows it is given and collates them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from panda.data.cache import CachedSource
from panda.data.collate import PackedCollator


class PackedRows(Dataset):
    """Rows of several cached sources under one global row id; an index is a whole batch's row ids.

    Args:
        caches: One cached source per mixture entry.
        row_maps: Per entry, the cached rows it uses (``None``: all, in order) — held-out splits select rows here.
        source_ids: Per entry, its index into the data module's ``source_names``.
        collator: Turns the rows into the BATCH CONTRACT.
    """

    def __init__(self, caches: list[CachedSource], row_maps: list[np.ndarray | None], source_ids: list[int],
                 collator: PackedCollator) -> None:
        self.caches, self.row_maps, self.source_ids, self.collator = caches, row_maps, source_ids, collator
        self.row_counts = [c.num_rows if m is None else len(m) for c, m in zip(caches, row_maps)]
        self.offsets = np.concatenate([[0], np.cumsum(self.row_counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, row_id: int) -> tuple[int, int]:
        """``(entry, cached row)`` of a global row id."""
        entry = int(np.searchsorted(self.offsets, row_id, side="right")) - 1
        local = int(row_id - self.offsets[entry])
        row_map = self.row_maps[entry]
        return entry, local if row_map is None else int(row_map[local])

    def documents(self, row_id: int) -> list[dict]:
        entry, row = self.locate(row_id)
        return [{"input_ids": ids, "labels": labels, "source_id": self.source_ids[entry]}
                for ids, labels in self.caches[entry].row(row)]

    def row_lengths(self) -> np.ndarray:
        """Tokens of every global row, shape ``(len(self),)``."""
        return self._per_row(CachedSource.row_lengths)

    def row_sequence_counts(self) -> np.ndarray:
        """Sequences in every global row, shape ``(len(self),)``."""
        return self._per_row(CachedSource.row_sequence_counts)

    def _per_row(self, per_cached_row) -> np.ndarray:
        """``per_cached_row(cache)`` (one value per cached row) of every entry, restricted to its rows, joined."""
        parts = []
        for cache, row_map in zip(self.caches, self.row_maps):
            values = per_cached_row(cache)
            parts.append(values if row_map is None else values[row_map])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __getitem__(self, row_ids: np.ndarray) -> dict[str, torch.Tensor]:
        return self.collator([self.documents(int(r)) for r in row_ids])

