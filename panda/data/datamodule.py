"""Panda's LightningDataModule: sources → cached packed rows → weighted, rank-disjoint, resumable batches.

The pipeline, one module per stage::

    CorpusSource.read (sources.py) → encode_examples (tokenize.py) → pack (packing.py)     ┐ once, cached, built
        → compact memory-mapped Arrow per source (cache.py)                                ┘ by every rank (prepare.py)
    → held-out split (split.py) → epoch plan of rows (mixture.py) → this rank's batches of PackedRows (rows.py)
    → PackedCollator (collate.py) → BATCH CONTRACT, through a ResumableLoader (loader.py)

This module only wires the stages to Lightning's hooks: building the caches (every rank takes a share in
:meth:`PandaDataModule.setup`; ``prepare_data`` builds only in a single-process job, since Lightning calls it on
one process per node), the loaders, and the resumable state (``(epoch, batches consumed)``, see
:mod:`panda.data.loader`). What the data holds is reported by :mod:`panda.data.stats`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info

from panda.data import stats
from panda.data.cache import CachedSource, default_cache_dir
from panda.data.collate import PAD_MULTIPLE, PackedCollator
from panda.data.loader import ResumableLoader
from panda.data.mixture import MixtureSampler
from panda.data.paths import expand_path, expand_source
from panda.data.prepare import prepare_sources
from panda.data.rows import PackedRows
from panda.data.sources import CorpusSource
from panda.data.split import held_out_split
from panda.data.tokenize import Truncation

__all__ = ["PackedRows", "PandaDataModule", "ResumableLoader"]


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
        # plain values only (checkpoints load with weights_only=True): export finds the tokenizer here. What the
        # model also knows (max_seq_length, source_names) it holds itself: Lightning refuses two differing copies
        self.save_hyperparameters({"tokenizer": tokenizer, "packing": packing})
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
        self.sources = [expand_source(s, "data.sources") for s in self.sources]
        self.val_sources = [expand_source(s, "data.val_sources") for s in self.val_sources]
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
        if self.trainer is not None:  # a training run logs what it trains on; the data tools print it themselves
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

    # ---- reporting -----------------------------------------------------------------------------------------

    def epoch_stats(self, epoch: int = 0) -> dict:
        """See :func:`panda.data.stats.epoch_stats`."""
        return stats.epoch_stats(self, epoch)

    def summary(self) -> str:
        """See :func:`panda.data.stats.source_table`."""
        return stats.source_table(self)
