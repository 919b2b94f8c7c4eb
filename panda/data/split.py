"""The held-out split: a seeded share of every training source's packed rows kept for validation."""

from __future__ import annotations

import zlib

import numpy as np


def held_out_split(num_rows: int, fraction: float, seed: int, name: str) -> tuple[np.ndarray | None, np.ndarray]:
    """``(training rows or None for all, held-out rows)`` of one source: a seeded ``fraction`` of its rows (at
    least one when ``fraction > 0`` and it has two or more), seeded by the source's name so that adding or
    reordering sources keeps every split."""
    held = int(round(fraction * num_rows))
    if fraction > 0 and num_rows > 1:
        held = max(held, 1)
    if held == 0:
        return None, np.zeros(0, dtype=np.int64)
    order = np.random.default_rng((seed, zlib.crc32(name.encode()))).permutation(num_rows)
    return np.sort(order[held:]), np.sort(order[:held])

