"""The offline teacher of :mod:`panda.model.distill`: its top-k logits at every trained position, computed once.

Layout under ``<root>/<key>/`` (the key, as the data cache's, hashes everything the logits depend on: the teacher
directory's files by name, size and modification time — hashing 26 GB of weights would take minutes —, the training
rows' data caches, ``top_k`` and this module's code)::

    shard-<r>-of-<w>/keys.npy      (M, 20) uint8    sha1 of each row's real tokens and positions (what was run)
    shard-<r>-of-<w>/offsets.npy   (M + 1,) int64   row m's trained positions are entries offsets[m]:offsets[m+1]
    shard-<r>-of-<w>/values.npy    (P, K) float32   the teacher's top-K logits per trained position
    shard-<r>-of-<w>/ids.npy       (P, K) int32     their token ids

Rank ``r`` of ``w`` writes the rows ``r, r + w, ...`` into its shard, published by a rename when complete; the cache
is complete when every shard of one ``w`` exists. Rows are found by content (a packed row's real tokens and
position ids, padding excluded), so any later sampler order, batch size or world size reads the same cache.
Arrays are opened with ``mmap_mode="r"``: memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from panda.errors import UserError

_KEY_BYTES = 20


def row_key(input_ids: torch.Tensor, position_ids: torch.Tensor, source_ids: torch.Tensor) -> bytes:
    """sha1 of one packed row's real (non-padding) tokens and positions."""
    real = source_ids >= 0
    digest = hashlib.sha1(input_ids[real].to(torch.int64).cpu().numpy().tobytes())
    digest.update(position_ids[real].to(torch.int64).cpu().numpy().tobytes())
    return digest.digest()


def _teacher_fingerprint(teacher_dir: str) -> list:
    root = Path(teacher_dir)
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*")) if p.is_file()]


class TeacherCache:
    """The cached top-k teacher logits of one training set (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[bytes, tuple[int, int]] = {}
        self._shards: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @classmethod
    def for_run(cls, teacher_dir: str, rows, top_k: int, root: str | Path) -> TeacherCache:
        """The cache of ``teacher_dir``'s top-``top_k`` logits over the training rows ``rows`` (``PackedRows``)."""
        inputs = {"teacher": _teacher_fingerprint(teacher_dir), "top_k": top_k,
                  "rows": [[str(c.path), None if m is None else hashlib.sha1(np.asarray(m).tobytes()).hexdigest()]
                           for c, m in zip(rows.caches, rows.row_maps)],
                  "code": hashlib.sha1(Path(__file__).read_bytes()).hexdigest()}
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]
        return cls(Path(root) / f"teacher-{key}")

    def _complete_shards(self) -> list[Path]:
        found: dict[int, set[int]] = {}
        for shard in self.path.glob("shard-*-of-*"):
            match = re.fullmatch(r"shard-(\d+)-of-(\d+)", shard.name)
            if match:
                found.setdefault(int(match[2]), set()).add(int(match[1]))
        for world, ranks in sorted(found.items()):
            if ranks == set(range(world)):
                return [self.path / f"shard-{r}-of-{world}" for r in range(world)]
        return []

    def complete(self) -> bool:
        return bool(self._complete_shards())

    def build(self, rows, top_k_fn: Callable, *, batch_size: int, rank: int, world_size: int,
              device: torch.device) -> None:
        """Run the teacher (``top_k_fn(batch) → (values, ids, trained per row)``) over this rank's share of
        ``rows`` and publish the shard."""
        final = self.path / f"shard-{rank}-of-{world_size}"
        partial = self.path / f".shard-{rank}-of-{world_size}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        mine = np.arange(rank, len(rows), world_size)
        keys, offsets, values, ids = [], [0], [], []
        bar = tqdm(total=len(mine), desc="teacher logits", unit="row", disable=rank != 0 or not _tty())
        for start in range(0, len(mine), batch_size):
            batch = {k: v.to(device) for k, v in rows[mine[start:start + batch_size]].items()}
            top_values, top_ids, per_row = top_k_fn(batch)
            for b in range(batch["input_ids"].shape[0]):
                keys.append(np.frombuffer(row_key(batch["input_ids"][b], batch["position_ids"][b],
                                                  batch["source_ids"][b]), dtype=np.uint8))
                offsets.append(offsets[-1] + int(per_row[b]))
            values.append(top_values.float().cpu().numpy())
            ids.append(top_ids.to(torch.int32).cpu().numpy())
            bar.update(batch["input_ids"].shape[0])
        bar.close()
        k = values[0].shape[1] if values else 1
        np.save(partial / "keys.npy", np.stack(keys) if keys else np.zeros((0, _KEY_BYTES), np.uint8))
        np.save(partial / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(partial / "values.npy", np.concatenate(values) if values else np.zeros((0, k), np.float32))
        np.save(partial / "ids.npy", np.concatenate(ids) if ids else np.zeros((0, k), np.int32))
        os.replace(partial, final)

    def open(self) -> None:
        """Memory-map every shard and index the rows by key."""
        shards = self._complete_shards()
        if not shards:
            raise UserError(f"teacher cache {self.path}: incomplete (no full set of shard-*-of-N folders)")
        self._rows, self._shards = {}, []
        for number, shard in enumerate(shards):
            keys = np.load(shard / "keys.npy")
            self._shards.append(tuple(np.load(shard / n, mmap_mode="r") for n in ("offsets.npy", "values.npy",
                                                                                  "ids.npy")))
            for m, key in enumerate(keys):
                self._rows[key.tobytes()] = (number, m)

    def lookup(self, batch: dict[str, torch.Tensor], trained: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, K)`` cached logits and ids for the trained positions of ``batch`` (row-major, as ``trained``)."""
        values, ids = [], []
        for b in range(batch["input_ids"].shape[0]):
            key = row_key(batch["input_ids"][b], batch["position_ids"][b], batch["source_ids"][b])
            if key not in self._rows:
                raise UserError(f"teacher cache {self.path}: a training row is not in the cache (the data changed "
                                "since it was built?); delete the folder to rebuild it")
            shard, m = self._rows[key]
            offsets, shard_values, shard_ids = self._shards[shard]
            lo, hi = int(offsets[m]), int(offsets[m + 1])
            if hi - lo != int(trained[b].sum()):
                raise UserError(f"teacher cache {self.path}: a row's trained positions differ from the cache's")
            values.append(torch.from_numpy(np.array(shard_values[lo:hi])))
            ids.append(torch.from_numpy(np.array(shard_ids[lo:hi])))
        return torch.cat(values).to(device), torch.cat(ids).to(device)


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


__all__ = ["TeacherCache", "row_key"]
