"""Panda's LightningDataModule: sources → cached packed rows → weighted, rank-disjoint, resumable batches.

The pipeline, one module per stage::

    CorpusSource.read (sources.py) → encode_example (tokenize.py) → pack (packing.py)      ┐ once, cached
        → memory-mapped Arrow per source (cache.py)                                        ┘ (rank 0 builds)
    → epoch plan of rows (mixture.py) → this rank's batches → PackedCollator (collate.py) → BATCH CONTRACT

Resuming. ``state_dict()`` is ``(epoch, batches consumed)``. The number consumed is read from the trainer's
batch progress when the checkpoint is written — not from what the sampler has yielded, which runs ahead by the
DataLoader workers' prefetch — and on restore the train loader starts exactly at the next batch, so a resumed run
sees the batches an uninterrupted run would have seen, with no replay. Lightning counts the batches of a resumed
epoch itself, so ``len(train_dataloader())`` stays the full epoch length; it is exact (``batch_size`` rows per
batch, every rank the same count), and ``trainer.estimated_stepping_batches`` sizes the LR schedule from it.

DeepSpeed restores checkpoints *after* the strategy set-up, which already built the train loader (to estimate
the stepping batches) and called ``iter()`` on it; the train loader therefore starts its worker iterator only at
the first ``next()``, after the restored state is in place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from panda.data.cache import CachedSource, default_cache_dir
from panda.data.collate import PackedCollator
from panda.data.mixture import MixtureSampler
from panda.data.prepare import prepare_sources
from panda.data.sources import CorpusSource
from panda.data.tokenize import Truncation

PAD_MULTIPLE = 8
"""With ``pad_to="longest"`` a batch's width is rounded up to a multiple of this (tensor-core friendly shapes)."""


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


def expand_path(path: str, what: str) -> str:
    """Expand ``${VAR}``/``$VAR`` and ``~``; an unset variable is an error naming it and ``what`` uses it."""
    value = os.path.expanduser(os.path.expandvars(path))
    missing = re.findall(r"\$\{?(\w+)", value)
    if missing:
        raise ValueError(f"{what}: path {path!r} uses environment variable ${missing[0]}, which is not set "
                         f"(export it, e.g. {missing[0]}=/data/panda)")
    return value


def _expand_source(source: CorpusSource, key: str) -> CorpusSource:
    if isinstance(source.paths, str):
        return dataclasses.replace(source, paths=expand_path(source.paths, f"{key} {source.name!r}"))
    return dataclasses.replace(source, paths=[expand_path(p, f"{key} {source.name!r}") for p in source.paths])


class PandaDataModule(LightningDataModule):
    """Weighted, packed, cached, resumable training data for Panda (see module docstring).

    Args:
        tokenizer: Hugging Face tokenizer directory (``save_pretrained`` layout).
        sources: Training corpora; each ``weight`` is a per-epoch repetition factor (1 = every example once,
            3 = upsampled three times, 0.5 = a random half each epoch; see :mod:`panda.data.mixture`).
        val_sources: Validation corpora, read in order, each example once, never shuffled.
        val_fraction: Share of every training source's packed rows held out for validation (seeded, the same in
            every run, at least one row per source); 0 = none. Combines with ``val_sources``.
        max_seq_length: Longest training sequence; rows are packed up to it.
        batch_size: Rows per micro-batch on each device.
        num_workers: DataLoader worker processes per device.
        seed: Seed of the mixture (order, fractional draws) and of the held-out split.
        packing: Pack several documents per row (``False``: one document per row, padded).
        pad_to: ``longest`` pads each batch to its longest row (rounded up to a multiple of 8); ``max`` pads
            every batch to ``max_seq_length`` (fixed shapes).
        truncation: Over-long instructions: ``trim_prompt_start`` keeps the response and trims the prompt's
            beginning; ``drop`` drops them. Both are counted.
        cache_dir: Where tokenized sources are cached; default ``$PANDA_CACHE/data`` or ``~/.cache/panda/data``.
        strict: Stop at the first bad record of any source (overrides each source's ``strict``), also when the
            source is already cached.
        num_proc: Processes per rank that build the caches; default: the CPUs available per local rank. Under
            ``torch.distributed`` every rank builds a share (see :mod:`panda.data.prepare`).
    """

    def __init__(self, tokenizer: str, sources: list[CorpusSource], val_sources: list[CorpusSource] | None = None,
                 val_fraction: float = 0.0, max_seq_length: int = 2048, batch_size: int = 4, num_workers: int = 0,
                 seed: int = 0, packing: bool = True, pad_to: Literal["longest", "max"] = "longest",
                 truncation: Truncation = "trim_prompt_start", cache_dir: str | None = None,
                 strict: bool = False, num_proc: int | None = None) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources is empty: declare at least one CorpusSource")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: source names must be unique, got {names}")
        self.tokenizer_path = tokenizer
        self.sources = list(sources)
        self.val_sources = list(val_sources or [])
        if strict:
            self.sources = [dataclasses.replace(s, strict=True) for s in self.sources]
            self.val_sources = [dataclasses.replace(s, strict=True) for s in self.val_sources]
        self.val_fraction, self.max_seq_length, self.batch_size = val_fraction, max_seq_length, batch_size
        self.num_workers, self.seed, self.packing, self.pad_to = num_workers, seed, packing, pad_to
        self.truncation = truncation
        self.cache_dir = cache_dir
        self.num_proc = num_proc
        self._resolved = False
        self.source_names = list(dict.fromkeys(names + [s.name for s in self.val_sources]))
        self.rank, self.world_size = 0, 1
        self.train_caches: list[CachedSource] = []
        self.val_caches: list[CachedSource] = []
        self.train_rows: PackedRows | None = None
        self.val_rows: PackedRows | None = None
        self._tokenizer = None
        self._train_loader: ResumableLoader | None = None
        self._pending_state: dict | None = None

    # ---- building ------------------------------------------------------------------------------------------

    def _resolve_paths(self) -> None:
        """Expand environment variables in the configured paths (at set-up, so configs parse without them)."""
        if self._resolved:
            return
        self.tokenizer_path = expand_path(self.tokenizer_path, "data.tokenizer")
        self.cache_dir = expand_path(self.cache_dir, "data.cache_dir") if self.cache_dir else str(default_cache_dir())
        self.sources = [_expand_source(s, "data.sources") for s in self.sources]
        self.val_sources = [_expand_source(s, "data.val_sources") for s in self.val_sources]
        self._resolved = True

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from panda.data.tokenizer import load_tokenizer

            self._resolve_paths()
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def prepare(self, progress: bool = True) -> list[CachedSource]:
        """Every source's cache (training, then validation), building the missing ones; under
        ``torch.distributed`` every rank must call it (each builds a share)."""
        self._resolve_paths()
        built = prepare_sources(self.sources + self.val_sources, self.tokenizer, self.tokenizer_path, self.cache_dir,
                                max_seq_length=self.max_seq_length, packing=self.packing,
                                truncation=self.truncation, num_proc=self.num_proc, progress=progress)
        return [cache for cache, _ in built]

    def prepare_data(self) -> None:
        """Build every source's cache in a single-process job. Lightning calls this on one process per node
        only, so in a multi-process job the build waits for :meth:`setup`, where every rank takes a share."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Open the caches (building any that are missing), split held-out rows, and log the source summary."""
        trainer = self.trainer
        if trainer is not None:
            self.rank, self.world_size = trainer.global_rank, trainer.world_size
        if self.train_rows is not None:
            return
        caches = self.prepare()
        self.train_caches, self.val_caches = caches[:len(self.sources)], caches[len(self.sources):]
        splits = [held_out_split(c.num_rows, self.val_fraction, self.seed, s.name)
                  for s, c in zip(self.sources, self.train_caches)]
        train_maps, held_out = [train for train, _ in splits], [held for _, held in splits]
        collator = PackedCollator.from_tokenizer(self.tokenizer, self.max_seq_length, self.pad_to,
                                                 PAD_MULTIPLE if self.pad_to == "longest" else 1)
        ids = [self.source_names.index(s.name) for s in self.sources]
        self.train_rows = PackedRows(self.train_caches, train_maps, ids, collator)
        val_caches = [c for c, h in zip(self.train_caches, held_out) if len(h)] + self.val_caches
        val_maps = [h for h in held_out if len(h)] + [None] * len(self.val_caches)
        val_ids = [i for i, h in zip(ids, held_out) if len(h)] + [self.source_names.index(s.name)
                                                                   for s in self.val_sources]
        self.val_rows = PackedRows(val_caches, val_maps, val_ids, collator)
        rank_zero_info("data sources:\n" + self.summary())

    # ---- loaders -------------------------------------------------------------------------------------------

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def train_sampler(self) -> MixtureSampler:
        """A fresh sampler of this rank's training batches (also used by the ``stats`` tool)."""
        assert self.train_rows is not None, "call setup() first"
        sampler = MixtureSampler(self.train_rows.row_counts, self.weights, self.batch_size, seed=self.seed,
                                 rank=self.rank, world_size=self.world_size, shuffle=True, pad=True)
        if len(sampler) == 0:
            raise ValueError("the training mix is empty: every source has no rows or weight 0 "
                             f"(rows per source: {dict(zip([s.name for s in self.sources], sampler.row_counts))})")
        return sampler

    def train_dataloader(self) -> ResumableLoader:
        sampler = self.train_sampler()
        self._train_loader = ResumableLoader(self.train_rows, sampler, self.num_workers, self._trainer_consumed)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
        return self._train_loader

    def val_dataloader(self) -> ResumableLoader | list:
        assert self.val_rows is not None, "call setup() first"
        if len(self.val_rows) == 0:
            return []
        sampler = MixtureSampler(self.val_rows.row_counts, [1.0] * len(self.val_rows.row_counts), self.batch_size,
                                 seed=self.seed, rank=self.rank, world_size=self.world_size, shuffle=False,
                                 pad=self.world_size > 1)
        return ResumableLoader(self.val_rows, sampler, self.num_workers)

    # ---- resuming ------------------------------------------------------------------------------------------

    def _trainer_consumed(self) -> int | None:
        """Batches of the current epoch the trainer has finished (``None`` when not fitting under a trainer)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _plan_signature(self) -> dict:
        sampler = self._train_loader.sampler
        return {"batches_per_epoch": len(sampler), "batch_size": self.batch_size, "world_size": self.world_size,
                "seed": self.seed, "row_counts": sampler.row_counts, "weights": sampler.weights}

    def state_dict(self) -> dict:
        """``{"epoch", "consumed", "plan"}`` of the training loader (empty before it exists)."""
        if self._train_loader is None:
            return {}
        return {**self._train_loader.state_dict(), "plan": self._plan_signature()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        self._pending_state = state_dict
        if self._train_loader is not None:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict) -> None:
        self._pending_state = None  # a restored position applies to one loader; later epochs follow set_epoch
        saved, current = state.get("plan", {}), self._plan_signature()
        changed = [key for key in current if key in saved and saved[key] != current[key]]
        if changed:
            detail = ", ".join(f"{key}: {saved[key]} → {current[key]}" for key in changed)
            raise ValueError(f"cannot resume the data order exactly: the data plan changed since the checkpoint "
                             f"({detail}). Resume with the same data config and number of devices, or start a new "
                             "run from the checkpoint's weights")
        self._train_loader.load_state_dict(state)

    # ---- reporting -----------------------------------------------------------------------------------------

    def epoch_stats(self, epoch: int = 0) -> dict:
        """What epoch ``epoch`` of the training plan holds, over all ranks: per source its rows, sequences and
        tokens, its target share of sequences (``weight * sequences``, normalized) against the realized share,
        and the useful-token fraction (real tokens / padded positions of every batch)."""
        sampler = self.train_sampler()
        plan = sampler.plan(epoch)
        rows = self.train_rows
        sequences = rows.row_sequence_counts()
        lengths = rows.row_lengths()
        entry_of_row = np.searchsorted(rows.offsets, plan, side="right") - 1
        per_source = {}
        target = np.array([w * sequences[rows.offsets[i]:rows.offsets[i + 1]].sum()
                           for i, w in enumerate(self.weights)], dtype=np.float64)
        total_seqs, total_tokens = sequences[plan].sum(), lengths[plan].sum()
        for i, source in enumerate(self.sources):
            mine = plan[entry_of_row == i]
            per_source[source.name] = {
                "weight": source.weight, "rows": len(mine), "sequences": int(sequences[mine].sum()),
                "tokens": int(lengths[mine].sum()), "target_share": float(target[i] / max(target.sum(), 1e-12)),
                "realized_share": float(sequences[mine].sum() / max(total_seqs, 1)),
                "token_share": float(lengths[mine].sum() / max(total_tokens, 1)),
            }
        batches = len(sampler)
        positions = np.arange(batches * self.batch_size * self.world_size) % len(plan)
        batch_lengths = lengths[plan[positions]].reshape(-1, self.batch_size)  # (batches * world_size, B)
        widths = np.full(len(batch_lengths), self.max_seq_length)
        if self.pad_to == "longest":
            widths = np.minimum(-(-batch_lengths.max(axis=1) // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_seq_length)
        useful = batch_lengths.sum() / max(int((widths * self.batch_size).sum()), 1)
        # loss tokens per source are known in total; weight each source's share of them by its tokens in the plan
        loss_tokens = sum(s["tokens"] * c.meta["encoding"]["loss_tokens"] / max(c.meta["encoding"]["tokens"], 1)
                          for s, c in zip(per_source.values(), rows.caches))
        return {"sources": per_source, "batches": batches, "useful_fraction": float(useful),
                "loss_fraction": loss_tokens / max(int(total_tokens), 1)}

    def summary(self) -> str:
        """Per-source table: records read/used/skipped, examples, sequences, truncated/dropped, tokens, loss
        tokens, packed rows and mixture weight; then the first bad records."""
        header = ("source", "split", "read", "used", "skipped", "examples", "seqs", "trunc", "dropped", "tokens",
                  "loss_tok", "rows", "weight")
        table = [header]
        problems = []
        entries = [(c, "train", s.weight) for c, s in zip(self.train_caches, self.sources)]
        entries += [(c, "val", "-") for c in self.val_caches]
        for cache, split, weight in entries:
            m, enc = cache.meta, cache.meta["encoding"]
            table.append((m["name"], split, m["read"], m["used"], m["skipped"], enc["examples"], enc["sequences"],
                          enc["truncated"], enc["dropped"], enc["tokens"], enc["loss_tokens"], m["rows"], weight))
            problems += [f"  {m['name']}: {p}" for p in m["problems"]]
        widths = [max(len(str(row[k])) for row in table) for k in range(len(header))]
        lines = ["  ".join(str(v).rjust(w) if k > 1 else str(v).ljust(w) for k, (v, w) in enumerate(zip(row, widths)))
                 for row in table]
        if self.val_fraction:
            lines.append(f"val_fraction {self.val_fraction}: {len(self.val_rows or [])} rows held out for validation")
        if problems:
            lines.append("first bad records (all are counted above):")
            lines += problems
        return "\n".join(lines)
