"""Tokenize once: each source's sequences and packed rows, cached on disk as a compact memory-mapped Arrow file.

The reference re-read and re-tokenized every JSON corpus into Python lists on every GPU at every start. Here a
source is read, tokenized and packed once (by :mod:`panda.data.prepare`, in parallel) into a directory named by a
key over everything the result depends on::

    {cache_dir}/{source name}-{key}/
        sequences.arrow   input_ids list<uint16> (int32 if the vocabulary needs it), trained list<uint16|int32>
        lengths.npy       tokens per sequence                           ┐
        row_offsets.npy   row r holds row_items[row_offsets[r]:…[r+1]]  ├ np.load(mmap_mode="r")
        row_items.npy     sequence indices, row after row               ┘
        meta.json         read/used/skipped counts, encoding stats, first problems, the key's inputs

**Compact.** A label is either the token at its position or ``IGNORE_INDEX`` (labels are unshifted, see
:mod:`panda.data.tokenize`), so storing labels as a second int32 column repeats the ids. A sequence stores its ids
as uint16 when the vocabulary fits (LLaMA's 32,000) and its *trained spans* as ``[start, end)`` pairs, flat::

    input_ids   <s>  p1  p2  p3  r1  r2 </s>  u1  a1 </s>
    labels     -100 -100 -100 -100 r1  r2 </s> -100 a1 </s>
    trained    [4, 7, 8, 10]                      ← two spans; labels = ids inside them, IGNORE_INDEX outside

2 bytes per token instead of 8, and :meth:`CachedSource.sequence` rebuilds the labels exactly. The writer refuses
a label that is neither (nothing the tokenizer stage makes), so the compact form can never lose one.

key = sha256 of: the files (resolved path, size, mtime), the source's settings (format, loss policy, multi-turn
mode, ...; not its mixture weight), the tokenizer's files, ``max_seq_length``, packing and truncation, and the
source code of the modules that produce the sequences (so a code change is a cache miss, not a stale cache).

Rows hold documents of one source only: packing happens per source, in chunks of :data:`PACK_CHUNK` sequences
(bounded memory, and best-fit decreasing barely gains from larger chunks). Documents are masked from each other
inside a row, so row-mates do not change any document's loss; mixing then works on whole rows
(:mod:`panda.data.mixture`). Nothing here holds a corpus in RAM: the Arrow file is memory-mapped, and the index
arrays are a few bytes per sequence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from panda.constants import IGNORE_INDEX
from panda.data.packing import pack
from panda.data.tokenize import Truncation

PACK_CHUNK = 65_536
"""Sequences packed together at most (the packer's memory is proportional to it)."""

WRITE_BATCH = 2_048
"""Sequences per Arrow record batch written."""

_CODE_MODULES = ("panda.data.records", "panda.data.sources", "panda.data.templates", "panda.data.tokenize",
                 "panda.data.packing", "panda.data.cache", "panda.data.prepare")
_KEY_EXCLUDED = {"weight", "strict", "paths"}  # mixing and error policy do not change the cached sequences


def default_cache_dir() -> Path:
    """``$PANDA_CACHE`` or ``~/.cache/panda``, with a ``data`` subfolder."""
    return Path(os.environ.get("PANDA_CACHE", Path.home() / ".cache" / "panda")) / "data"


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
"""Files besides ``tokenizer*`` that define a Hugging Face tokenizer (the fingerprint reads only these)."""


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 over the names and contents of the tokenizer files of a directory (``tokenizer*`` and
    :data:`TOKENIZER_FILES`). In the stock layout the tokenizer lives in the model directory: its weights (13 GB for
    LLaMA-7B) are not read, and training them further does not invalidate the cache."""
    digest = hashlib.sha256()
    root = Path(tokenizer_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and (p.name.startswith("tokenizer")
                                                                        or p.name in TOKENIZER_FILES)):
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


def cache_path(cache_dir: str | Path, name: str, inputs: dict) -> Path:
    """Where the source ``name`` with key inputs ``inputs`` is cached."""
    safe_name = re.sub(r"[^\w.-]", "_", name)
    return Path(cache_dir) / f"{safe_name}-{cache_key(inputs)}"


# ---- the compact sequence format -------------------------------------------------------------------------------

def sequence_schema(vocab_size: int, max_seq_length: int) -> pa.Schema:
    """``input_ids`` as uint16 when every id fits (``vocab_size <= 65536``), ``trained`` spans as uint16 when
    every position does; int32 otherwise."""
    ids = pa.uint16() if vocab_size <= 1 << 16 else pa.int32()
    spans = pa.uint16() if max_seq_length < 1 << 16 else pa.int32()
    return pa.schema([("input_ids", pa.list_(ids)), ("trained", pa.list_(spans))])


def compact_batch(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                  schema: pa.Schema) -> pa.RecordBatch:
    """One record batch of sequences in the compact form (see module docstring); vectorized over the batch."""
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    ids = np.fromiter((t for seq in input_ids for t in seq), dtype=np.int64, count=total)
    flat_labels = np.fromiter((t for seq in labels for t in seq), dtype=np.int64, count=total)
    if np.any(np.fromiter(map(len, labels), dtype=np.int64, count=len(labels)) != lengths):
        raise ValueError("every sequence needs as many labels as input ids")
    trained = flat_labels != IGNORE_INDEX
    if np.any(flat_labels[trained] != ids[trained]):
        raise ValueError("a label is neither its position's token nor IGNORE_INDEX: the compact cache cannot "
                         "store it")
    id_type = schema.field("input_ids").type.value_type
    if total and (ids.min() < 0 or ids.max() > np.iinfo(id_type.to_pandas_dtype()).max):
        raise ValueError(f"token id {int(ids.max())} does not fit the cache's {id_type} ids")
    nonempty = lengths > 0
    starts_of_seqs, ends_of_seqs = offsets[:-1][nonempty], offsets[1:][nonempty] - 1
    before = np.zeros(total, dtype=bool)
    before[1:] = trained[:-1]
    before[starts_of_seqs] = False  # a span never continues across sequences
    after = np.zeros(total, dtype=bool)
    after[:-1] = trained[1:]
    after[ends_of_seqs] = False
    span_starts = np.flatnonzero(trained & ~before)
    span_ends = np.flatnonzero(trained & ~after) + 1
    owner = np.searchsorted(offsets, span_starts, side="right") - 1  # (spans,) sequence of each span
    spans = np.stack([span_starts - offsets[owner], span_ends - offsets[owner]], axis=1).ravel()
    span_offsets = np.concatenate([[0], 2 * np.cumsum(np.bincount(owner, minlength=len(lengths)))])
    span_type = schema.field("trained").type.value_type
    columns = [pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids, id_type)),
               pa.ListArray.from_arrays(pa.array(span_offsets, pa.int32()), pa.array(spans, span_type))]
    return pa.record_batch(columns, schema=schema)


def labels_from_spans(input_ids: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """The unshifted labels of a sequence: its ids inside the trained ``[start, end)`` spans, else IGNORE_INDEX."""
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
    for start, end in np.asarray(spans, dtype=np.int64).reshape(-1, 2):
        labels[start:end] = input_ids[start:end]
    return labels


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


class CachedSource:
    """One source's cached sequences and rows, memory-mapped.

    Picklable by path, so DataLoader workers reopen the files instead of copying arrays.

    Args:
        path: The cache directory of the source (as published by :mod:`panda.data.prepare`).
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
        """``(input_ids, labels)`` of sequence ``index`` as int64 arrays (labels rebuilt from the trained spans).

        Reads the one record batch holding it through zero-copy numpy views of the memory-mapped file
        (``Table.take`` would concatenate the whole column of a chunked table first: O(corpus) per batch).
        """
        chunk = int(np.searchsorted(self._chunk_starts, index, side="right")) - 1
        if chunk not in self._views:
            self._views[chunk] = tuple((column.offsets.to_numpy(), column.values.to_numpy())
                                       for column in (self._table.column(name).chunk(chunk)
                                                      for name in ("input_ids", "trained")))
        (id_offsets, ids), (span_offsets, spans) = self._views[chunk]
        k = index - self._chunk_starts[chunk]
        sequence_ids = ids[id_offsets[k]:id_offsets[k + 1]].astype(np.int64)
        return sequence_ids, labels_from_spans(sequence_ids, spans[span_offsets[k]:span_offsets[k + 1]])

    def row(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``(input_ids, labels)`` int64 arrays of the sequences in row ``index``, in packing order."""
        items = self.row_items[self.row_offsets[index]:self.row_offsets[index + 1]]
        return [self.sequence(int(item)) for item in items]

    def disk_bytes(self) -> int:
        """Bytes the cache directory takes on disk (its files' sizes)."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
