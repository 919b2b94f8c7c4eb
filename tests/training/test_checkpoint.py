"""AtomicCheckpoint: every N steps, last k kept, a crash during save leaves the previous checkpoint loadable.

Single-device runs in this process on a two-parameter model; the DeepSpeed (directory) variant runs for real in
tests/training/test_resume.py.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from panda.training.checkpoint import AtomicCheckpoint, clean_interrupted_saves, commit


class LineFit(L.LightningModule):
    """y = a·x + b by SGD; records the global step of its first training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.first_step: int | None = None

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.trainer.global_step
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    x = torch.linspace(-1, 1, 64).unsqueeze(1)  # (64, 1)
    return DataLoader(TensorDataset(x, 3 * x + 1), batch_size=4)


def fit(callback: AtomicCheckpoint, max_steps: int, ckpt_path: str | None = None) -> LineFit:
    module = LineFit()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, callbacks=[callback], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return module


def names(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_saves_every_n_steps_keeps_last_k_and_the_end(tmp_path):
    fit(AtomicCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, keep_last=3), max_steps=11)
    assert names(tmp_path) == ["step=00000008.ckpt", "step=00000010.ckpt", "step=00000011.ckpt"]
    assert torch.load(tmp_path / "step=00000010.ckpt", weights_only=False)["global_step"] == 10


def test_crash_during_save_keeps_previous_and_resume_cleans_up(tmp_path, monkeypatch):
    original = L.Trainer.save_checkpoint

    def crashing_save(trainer, filepath, weights_only=False, storage_options=None):
        if trainer.global_step == 4:
            with open(filepath, "wb") as handle:
                handle.write(b"half a checkpoint")
            raise OSError("No space left on device")
        original(trainer, filepath, weights_only, storage_options)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        fit(AtomicCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, keep_last=3), max_steps=10)
    assert names(tmp_path) == [".step=00000004.ckpt.partial", "step=00000002.ckpt"]
    assert torch.load(tmp_path / "step=00000002.ckpt", weights_only=False)["global_step"] == 2

    monkeypatch.setattr(L.Trainer, "save_checkpoint", original)
    with pytest.warns(UserWarning, match="did not finish"):
        resumed = fit(AtomicCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, keep_last=3), max_steps=6,
                      ckpt_path="last")
    assert resumed.first_step == 2
    assert names(tmp_path) == ["step=00000002.ckpt", "step=00000004.ckpt", "step=00000006.ckpt"]


def test_commit_replaces_a_directory_checkpoint_whole(tmp_path):
    final, partial = tmp_path / "step=00000004.ckpt", tmp_path / ".step=00000004.ckpt.partial"
    (final / "checkpoint").mkdir(parents=True)
    (final / "checkpoint" / "stale_shard.pt").write_bytes(b"old")
    (partial / "checkpoint").mkdir(parents=True)
    (partial / "checkpoint" / "shard.pt").write_bytes(b"new")
    commit(partial, final)
    assert names(tmp_path) == ["step=00000004.ckpt"]
    assert names(final / "checkpoint") == ["shard.pt"]


def test_clean_up_restores_a_checkpoint_caught_between_renames(tmp_path):
    (tmp_path / ".step=00000004.ckpt.retired").mkdir()
    (tmp_path / ".step=00000006.ckpt.partial").mkdir()
    removed = clean_interrupted_saves(tmp_path)
    assert [p.name for p in removed] == [".step=00000006.ckpt.partial"]
    assert names(tmp_path) == ["step=00000004.ckpt"]


def test_rng_state_comes_back_at_the_first_resumed_batch():
    callback = AtomicCheckpoint(every_n_train_steps=1)
    L.seed_everything(123, verbose=False)
    state = callback.state_dict()
    expected = torch.rand(3), random.random(), np.random.rand()
    L.seed_everything(0, verbose=False)
    callback.load_state_dict(state)
    torch.rand(3)  # e.g. the data loader drawing its base seed while it is rebuilt
    callback.on_train_batch_start(None, None, None, 0)
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


@pytest.mark.parametrize("kwargs, match", [
    ({"every_n_train_steps": 0}, "every_n_train_steps must be >= 1"),
    ({"keep_last": 0}, "keep_last must be >= 1 or -1"),
    ({"filename": "latest"}, "must contain '{step}'"),
])
def test_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AtomicCheckpoint(**kwargs)
