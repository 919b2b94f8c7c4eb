"""Checkpoints every N optimizer steps, keeping the last k, written so that a crash never costs the previous one.

A checkpoint is a file (single device, DDP) or a directory of shards (DeepSpeed: one model file, one optimizer
shard per rank). Either way it is first written under a hidden temporary name in the same folder and only renamed
to its final name once every rank has finished writing, and the oldest kept checkpoint is deleted only after that.
A process killed mid-save (SIGKILL, node loss, full disk) therefore leaves the previous checkpoints intact and at
most a hidden ``.<name>.partial`` entry, which the next run removes. ``--ckpt_path last`` resumes from the newest
complete checkpoint in ``dirpath``. Global rank 0 renames, so with several nodes ``dirpath`` must be on a
filesystem they share (as DeepSpeed's own checkpointing assumes).

Exact resume also needs the random-number generators: Lightning saves the sampler, loop, optimizer and scheduler
state but not the RNG. The callback gathers the RNG state of every rank into the checkpoint (with DeepSpeed only
rank 0's copy of the Lightning state is kept on disk) and each rank restores its own just before the first
resumed batch — after the data loader has been rebuilt, which itself draws from the global generator.

Keeping "the last k" is Lightning's top-k with the global step as the score; this module adds only the atomic
write, the clean-up and the RNG state.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from panda.io import RETIRED, publish, recover_retired, remove

PARTIAL_SUFFIX = ".partial"
"""Every rank writes its part of a checkpoint into ``.<name>.partial`` (one agreed name, so not
:func:`panda.io.sibling`'s random one); global rank 0 publishes it with :func:`panda.io.publish`."""


def _hidden(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def commit(partial: Path, final: Path) -> None:
    """Publish a fully written checkpoint ``partial`` (file or directory) under the name ``final``."""
    publish(partial, final)


def clean_interrupted_saves(dirpath: Path) -> list[Path]:
    """Remove what an interrupted save left in ``dirpath``; return the removed paths.

    A ``.<name>.retired`` entry whose ``<name>`` is missing was a complete checkpoint caught between the two
    renames of :func:`panda.io.publish`: it is restored instead of removed.
    """
    removed = []
    for leftover in sorted(dirpath.glob(f".*{RETIRED}")):
        old = recover_retired(dirpath / leftover.name[1:-len(RETIRED)])
        if old is not None:
            removed.append(old)
    for leftover in sorted(dirpath.glob(f".*{PARTIAL_SUFFIX}")):
        remove(leftover)
        removed.append(leftover)
    return removed


class AtomicCheckpoint(ModelCheckpoint):
    """Save every ``every_n_train_steps`` optimizer steps and at the end of training; keep the last ``keep_last``.

    Args:
        dirpath: Folder of the checkpoints. Set it (e.g. ``runs/panda-7b/checkpoints``) to resume with
            ``--ckpt_path last``; default: ``<log_dir>/checkpoints``, which changes with the logger's version.
        every_n_train_steps: Optimizer steps between checkpoints (the reference saved every 250).
        keep_last: How many of the newest checkpoints to keep on disk; older ones are deleted after a newer one
            is complete (except the one the run resumed from, which Lightning never deletes). ``-1`` keeps all.
        filename: Name pattern; ``{step}`` is the global (optimizer) step.
        save_on_train_end: Also save when training ends between two scheduled saves.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 250, keep_last: int = 3,
                 filename: str = "step={step:08d}", save_on_train_end: bool = True) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"AtomicCheckpoint: every_n_train_steps must be >= 1, got {every_n_train_steps}")
        if keep_last == 0 or keep_last < -1:
            raise ValueError(f"AtomicCheckpoint: keep_last must be >= 1 or -1 (keep all), got {keep_last}")
        if "{step" not in filename:
            raise ValueError(f"AtomicCheckpoint: filename {filename!r} must contain '{{step}}' so names are unique")
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep_last,
                         every_n_train_steps=every_n_train_steps, auto_insert_metric_name=False,
                         enable_version_counter=False)
        self.save_on_train_end = save_on_train_end
        self._pending_rng: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None and Path(self.dirpath).is_dir():
            for leftover in clean_interrupted_saves(Path(self.dirpath)):
                rank_zero_warn(f"removed {leftover}: left by a checkpoint save that did not finish")
        trainer.strategy.barrier("AtomicCheckpoint.setup")

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        final = Path(filepath)
        partial = _hidden(final, PARTIAL_SUFFIX)
        if trainer.is_global_zero and partial.exists():  # never mix shards with an earlier failed attempt
            remove(partial)
        trainer.strategy.barrier("AtomicCheckpoint.clear")
        trainer.save_checkpoint(str(partial), self.save_weights_only)  # every rank writes its part, then a barrier
        if trainer.is_global_zero:
            commit(partial, final)
        trainer.strategy.barrier("AtomicCheckpoint.commit")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_on_train_end and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        """The complete checkpoint of ``dirpath`` with the highest step, what ``ckpt_path="last"`` resumes from."""
        if self.dirpath is None:
            return super()._find_last_checkpoints(trainer)
        dirpath = Path(self.dirpath)
        if not dirpath.is_dir():
            return set()
        pattern = re.compile(r"\d+")
        newest = max((p for p in dirpath.glob(f"*{self.FILE_EXTENSION}") if not p.name.startswith(".")),
                     key=lambda p: [int(n) for n in pattern.findall(p.name)], default=None)
        return {str(newest)} if newest is not None else set()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_states": _gather_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        states = state_dict.get("rng_states")
        if states is None:
            return
        world_size, rank = _world()
        if len(states) != world_size:
            rank_zero_warn(f"checkpoint holds RNG states of {len(states)} ranks, this run has {world_size}: "
                           "random streams continue from fresh seeds, so the resumed run is not bit-identical")
            return
        self._pending_rng = states[rank]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)``
    accepts (Lightning loads checkpoints that way)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by global rank (collective: all ranks call it while dumping a checkpoint)."""
    world_size, _ = _world()
    states = _rng_state()
    if world_size == 1:
        return [states]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_checkpoint_path(ckpt_path: str | None) -> None:
    """Refuse a ``--ckpt_path`` that cannot be resumed from, before any model is built, naming the file.

    Cheap checks only (a 7B checkpoint is tens of GB): a file must be a complete zip archive (``torch.save``'s
    format: its directory sits at the end, so a truncated copy fails here); a DeepSpeed folder must name its tag in
    ``latest`` and hold that tag's model states, each a complete archive. ``last``/``best`` are Lightning's.
    """
    import zipfile

    from panda.errors import UserError

    if ckpt_path is None or ckpt_path in LIGHTNING_CKPT_NAMES or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if not path.exists():
        raise UserError(f"--ckpt_path {path}: no such checkpoint file or folder")
    if path.is_dir():
        latest = path / "latest"
        tag_dir = path / latest.read_text().strip() if latest.is_file() else path / "checkpoint"
        archives = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
        if not any(a.name.endswith("model_states.pt") for a in archives):
            raise UserError(f"--ckpt_path {path}: not a checkpoint (a DeepSpeed folder needs `latest` and "
                            f"{tag_dir.name}/*model_states.pt)")
    else:
        archives = [path]
    for archive in archives:
        try:
            with zipfile.ZipFile(archive) as opened:
                opened.infolist()
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(f"--ckpt_path {path}: {archive.name} is truncated or not a PyTorch checkpoint "
                            f"({error}); resume from an earlier checkpoint") from None
