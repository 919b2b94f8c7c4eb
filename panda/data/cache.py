"""Tokenize once: each source's sequences and packed rows, cached on disk as memory-mapped Arrow.

The reference re-read and re-tokenized every JSON corpus into Python lists on every GPU at every start. Here a
source is read, tokenized and packed once, streaming (one record at a time, Arrow record batches of a few thousand
sequences), into a directory named by a key over everything the result depends on::

    {cache_dir}/{source name}-{key}/
        sequences.arrow   input_ids, labels (list<int32>) per sequence — opened with datasets, memory-mapped
        lengths.npy       tokens per sequence                           ┐
        row_offsets.npy   row r holds row_items[row_offsets[r]:…[r+1]]  ├ np.load(mmap_mode="r")
        row_items.npy     sequence indices, row after row               ┘
        meta.json         read/used/skipped counts, encoding stats, first problems, the key's inputs

key = sha256 of: the files (resolved path, size, mtime), the source's settings (format, loss policy, multi-turn
mode, ...; not its mixture weight), the tokenizer's files, ``max_seq_length``, packing and truncation, and the
source code of the modules that produce the sequences (so a code change is a cache miss, not a stale cache).

Rows hold documents of one source only: packing happens per source, in chunks of :data:`PACK_CHUNK` sequences
(bounded memory, and best-fit decreasing barely gains from larger chunks). Documents are masked from each other
inside a row, so row-mates do not change any document's loss; mixing then works on whole rows
(:mod:`panda.data.mixture`).

Concurrency: the first process to take ``{key}.lock`` builds into a temporary directory and renames it into place;
every other process (other ranks, other nodes sharing the directory, a second run) waits on the lock and then
finds the finished directory — a cache hit. Nothing here holds a corpus in RAM: readers stream, the Arrow file is
memory-mapped, and the index arrays are a few bytes per sequence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from filelock import FileLock

from panda.data.packing import pack
from panda.data.report import ReadReport
from panda.data.tokenize import EncodingStats, Truncation, encode_example

log = logging.getLogger(__name__)

PACK_CHUNK = 65_536
"""Sequences packed together at most (the packer's memory is proportional to it)."""

WRITE_BATCH = 2_048
"""Sequences per Arrow record batch written."""

_CODE_MODULES = ("panda.data.records", "panda.data.sources", "panda.data.templates", "panda.data.tokenize",
                 "panda.data.packing", "panda.data.cache")
_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
_KEY_EXCLUDED = {"weight", "strict", "paths"}  # mixing and error policy do not change the cached sequences


def default_cache_dir() -> Path:
    """``$PANDA_CACHE`` or ``~/.cache/panda``, with a ``data`` subfolder."""
    return Path(os.environ.get("PANDA_CACHE", Path.home() / ".cache" / "panda")) / "data"


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 over the names and contents of the files in a tokenizer directory."""
    digest = hashlib.sha256()
    root = Path(tokenizer_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        _hash_file(path, digest)
    return digest.hexdigest()


def code_fingerprint() -> str:
    """sha256 over the source of the modules that turn corpus files into cached sequences."""
    import importlib

    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        module = importlib.import_module(name)
        _hash_file(Path(module.__file__), digest)
    return digest.hexdigest()


def cache_key_inputs(source, tokenizer_hash: str, *, max_seq_length: int, packing: bool,
                     truncation: Truncation) -> dict:
    """Everything the cached sequences of ``source`` depend on, as a JSON-able dict (stored in ``meta.json``)."""
    settings = {f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name not in _KEY_EXCLUDED}
    files = []
    for path in source.files():
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return {"source": settings, "files": files, "tokenizer": tokenizer_hash, "max_seq_length": max_seq_length,
            "packing": packing, "truncation": truncation, "code": code_fingerprint()}


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CachedSource:
    """One source's cached sequences and rows, memory-mapped.

    Picklable by path, so DataLoader workers reopen the files instead of copying arrays.

    Args:
        path: The cache directory of the source (as written by :func:`build_source_cache`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        from datasets import Dataset

        self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        self.sequences = Dataset.from_file(str(self.path / "sequences.arrow"))
        self._table = self.sequences.data.table
        self._views: dict[int, tuple] = {}
        column = self._table.column("input_ids")
        self._chunk_starts = np.cumsum([0] + [len(column.chunk(c)) for c in range(column.num_chunks)])
        self.lengths = np.load(self.path / "lengths.npy", mmap_mode="r")
        self.row_offsets = np.load(self.path / "row_offsets.npy", mmap_mode="r")
        self.row_items = np.load(self.path / "row_items.npy", mmap_mode="r")

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    def row_sequence_counts(self) -> np.ndarray:
        """Sequences per row, shape ``(num_rows,)``."""
        return np.diff(self.row_offsets)

    def row_lengths(self) -> np.ndarray:
        """Tokens per row, shape ``(num_rows,)``."""
        if self.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        per_item = np.asarray(self.lengths)[np.asarray(self.row_items)].astype(np.int64)
        return np.add.reduceat(per_item, np.asarray(self.row_offsets[:-1]))

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of sequence ``index`` as int64 arrays.

        Reads the one record batch holding it through zero-copy numpy views of the memory-mapped file
        (``Table.take`` would concatenate the whole column of a chunked table first: O(corpus) per batch).
        """
        chunk = int(np.searchsorted(self._chunk_starts, index, side="right")) - 1
        if chunk not in self._views:
            self._views[chunk] = tuple((column.offsets.to_numpy(), column.values.to_numpy())
                                       for column in (self._table.column(name).chunk(chunk)
                                                      for name in ("input_ids", "labels")))
        (id_offsets, ids), (label_offsets, labels) = self._views[chunk]
        k = index - self._chunk_starts[chunk]
        return (ids[id_offsets[k]:id_offsets[k + 1]].astype(np.int64),
                labels[label_offsets[k]:label_offsets[k + 1]].astype(np.int64))

    def row(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``(input_ids, labels)`` int64 arrays of the sequences in row ``index``, in packing order."""
        items = self.row_items[self.row_offsets[index]:self.row_offsets[index + 1]]
        return [self.sequence(int(item)) for item in items]


def _write_sequences(source, tokenizer, path: Path, *, max_seq_length: int, truncation: Truncation,
                     report: ReadReport) -> tuple[np.ndarray, EncodingStats]:
    """Stream ``source`` through the tokenizer into ``path`` (Arrow stream file); return lengths and stats."""
    stats = EncodingStats()
    lengths: list[int] = []
    buffer_ids: list[list[int]] = []
    buffer_labels: list[list[int]] = []

    def flush(writer) -> None:
        if buffer_ids:
            writer.write_batch(pa.record_batch([pa.array(buffer_ids, pa.list_(pa.int32())),
                                                pa.array(buffer_labels, pa.list_(pa.int32()))], schema=_SCHEMA))
            buffer_ids.clear()
            buffer_labels.clear()

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, _SCHEMA) as writer:
        for example in source.read(report):
            encoded = encode_example(example, tokenizer, max_seq_length, truncation=truncation)
            stats.add(encoded)
            for sequence in encoded.sequences:
                buffer_ids.append(sequence.input_ids)
                buffer_labels.append(sequence.labels)
                lengths.append(len(sequence.input_ids))
            if len(buffer_ids) >= WRITE_BATCH:
                flush(writer)
        flush(writer)
    return np.asarray(lengths, dtype=np.int32), stats


def pack_rows(lengths: np.ndarray, max_seq_length: int, packing: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets and items for sequences of ``lengths``: best-fit decreasing per chunk, or one per row."""
    if not packing:
        return np.arange(len(lengths) + 1, dtype=np.int64), np.arange(len(lengths), dtype=np.int64)
    counts: list[int] = []
    items: list[np.ndarray] = []
    for start in range(0, len(lengths), PACK_CHUNK):
        chunk = lengths[start:start + PACK_CHUNK].tolist()
        for row in pack(chunk, max_seq_length):
            counts.append(len(row))
            items.append(np.asarray(row, dtype=np.int64) + start)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    return offsets, (np.concatenate(items) if items else np.zeros(0, dtype=np.int64))


def build_source_cache(source, tokenizer, tokenizer_dir: str | Path, cache_dir: str | Path, *,
                       max_seq_length: int, packing: bool = True,
                       truncation: Truncation = "trim_prompt_start") -> tuple[CachedSource, bool]:
    """Return ``source``'s cache, building it if needed (see module docstring).

    Args:
        source: A :class:`~panda.data.sources.CorpusSource`.
        tokenizer: The loaded tokenizer of ``tokenizer_dir``.
        tokenizer_dir: Its directory (its files are part of the key).
        cache_dir: Root of the cache.
        max_seq_length: Longest sequence; also the packing capacity.
        packing: Pack sequences into rows (``False``: one sequence per row).
        truncation: Policy for over-long instructions (see :func:`panda.data.tokenize.encode_example`).

    Returns:
        The cache and whether it was built now (``False``: a cache hit).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    inputs = cache_key_inputs(source, tokenizer_fingerprint(tokenizer_dir), max_seq_length=max_seq_length,
                              packing=packing, truncation=truncation)
    safe_name = re.sub(r"[^\w.-]", "_", source.name)
    final = cache_dir / f"{safe_name}-{cache_key(inputs)}"
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").exists():
            return CachedSource(final), False
        tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            report = ReadReport()
            lengths, stats = _write_sequences(source, tokenizer, tmp / "sequences.arrow",
                                              max_seq_length=max_seq_length, truncation=truncation, report=report)
            offsets, items = pack_rows(lengths, max_seq_length, packing)
            np.save(tmp / "lengths.npy", lengths)
            np.save(tmp / "row_offsets.npy", offsets)
            np.save(tmp / "row_items.npy", items)
            counts = report.counts.get(source.name)
            meta = {
                "name": source.name,
                "read": counts.read if counts else 0, "used": counts.used if counts else 0,
                "skipped": counts.skipped if counts else 0, "examples": stats.examples,
                "encoding": stats.as_dict(), "rows": len(offsets) - 1,
                "problems": [str(p) for p in report.problems[:report.max_warnings]],
                "key_inputs": inputs,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("cached source %r: %d sequences in %d rows at %s", source.name, len(lengths), len(offsets) - 1, final)
    return CachedSource(final), True

