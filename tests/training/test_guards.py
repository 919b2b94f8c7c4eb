"""A NaN/inf loss stops the run before the step, naming step and sources, keeping the last good checkpoint; so
does an infinite gradient norm with a finite loss (also under real DeepSpeed ZeRO-1 in 2 CPU processes); the check
costs one host sync per optimizer step, not per micro-batch; fp16 on a GPU gets a clear warning.

The ZeRO-1 run happens in subprocesses (this file's ``__main__`` worker), as in ``tests/training/test_strategy.py``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from panda.model import PandaLM
from panda.training.checkpoint import AtomicCheckpoint
from panda.training.guards import NonFiniteGradientError, NonFiniteGuard, NonFiniteLossError, PrecisionWarning, \
    raise_if_not_finite, warn_about_precision
from tests.model.conftest import contract_datamodule, tiny_config  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


class PoisonedAt(PandaLM):
    """Produces a NaN loss at one global step (as an overflow would)."""

    bad_step = 3

    def _losses(self, batch):
        loss, *rest = super()._losses(batch)
        if self.training and self.global_step == self.bad_step:
            loss = loss * float("nan")
        return (loss, *rest)


class InfiniteGradientAt(PandaLM):
    """Finite loss, infinite gradient at one global step (as an exploding update would give)."""

    bad_step = 3

    def _losses(self, batch):
        loss, *rest = super()._losses(batch)
        if self.training and self.global_step == self.bad_step:
            weight = self.hf_model.get_output_embeddings().weight
            weight.register_hook(lambda grad: grad * float("inf")) if not hasattr(self, "_hooked") else None
            self._hooked = True
        return (loss, *rest)


def test_message_names_step_and_sources():
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at global step 7 \(epoch 1, micro-batch 3\).*coig"):
        raise_if_not_finite(torch.tensor(float("inf")), step=7, epoch=1, batch_idx=3, sources=["coig", "wiki"])
    raise_if_not_finite(torch.tensor(2.5), step=7, epoch=1, batch_idx=3, sources=[])


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, contract_datamodule, tmp_path):
    torch.manual_seed(0)
    model = PoisonedAt(config=tiny_config, source_names=contract_datamodule.source_names)
    checkpoints = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False, limit_val_batches=0,
                      callbacks=[AtomicCheckpoint(dirpath=str(checkpoints), every_n_train_steps=1, keep_last=1)])
    with pytest.raises(NonFiniteLossError, match="global step 3 .*sources: news"):
        trainer.fit(model, contract_datamodule)
    saved = [p.name for p in checkpoints.iterdir()]
    assert saved == ["step=00000003.ckpt"]  # written after step 3's optimizer step ... i.e. the last good weights
    state = torch.load(checkpoints / saved[0], weights_only=False)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was never taken


def test_a_nan_inside_an_accumulation_window_stops_before_the_step_with_one_sync_per_step(
        tiny_config, contract_datamodule, monkeypatch):
    torch.manual_seed(0)
    model = PoisonedAt(config=tiny_config, source_names=contract_datamodule.source_names)
    model.bad_step = 1  # the first micro-batch of the second window (micro-batches 2 and 3)
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False, limit_val_batches=0,
                      enable_checkpointing=False, accumulate_grad_batches=2)
    syncs = []
    reduce = trainer.strategy.reduce
    monkeypatch.setattr(trainer.strategy, "reduce", lambda *a, **k: syncs.append(inspect.stack()[1].function)
                        or reduce(*a, **k))
    before = None

    class Snapshot(NonFiniteGuard):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            nonlocal before
            before = [p.detach().clone() for p in pl_module.parameters()]
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    trainer.callbacks.append(Snapshot())
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at global step 1 \(epoch 0, micro-batch 2\)"):
        trainer.fit(model, contract_datamodule)
    assert syncs.count("on_before_optimizer_step") == 2  # one per optimizer step, none per micro-batch
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # the bad step was never taken


def test_an_infinite_gradient_norm_with_a_finite_loss_stops_before_the_step(tiny_config, contract_datamodule,
                                                                            tmp_path):
    torch.manual_seed(0)
    model = InfiniteGradientAt(config=tiny_config)
    checkpoints = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False, limit_val_batches=0,
                      gradient_clip_val=1.0,
                      callbacks=[AtomicCheckpoint(dirpath=str(checkpoints), every_n_train_steps=1, keep_last=1)])
    with pytest.raises(NonFiniteGradientError, match=r"gradient norm is inf at global step 3 while the loss is "
                                                     r"finite .*before the optimizer step"):
        trainer.fit(model, contract_datamodule)
    assert [p.name for p in checkpoints.iterdir()] == ["step=00000003.ckpt"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_tolerates_a_few_overflowing_steps():
    class FakeTrainer:
        precision, global_step = "16-mixed", 5

    guard = NonFiniteGuard(max_skipped_steps=2)
    guard._check_norm(FakeTrainer, True, float("inf"))
    guard._check_norm(FakeTrainer, True, float("inf"))
    guard._check_norm(FakeTrainer, False, 1.0)  # the loss scaler recovered: the count restarts
    guard._check_norm(FakeTrainer, True, float("inf"))
    guard._check_norm(FakeTrainer, True, float("inf"))
    with pytest.raises(NonFiniteGradientError, match=r"3 step\(s\) in a row"):
        guard._check_norm(FakeTrainer, True, float("inf"))


def test_zero1_run_stops_on_an_infinite_gradient_norm(tmp_path, tokenizer_dir):
    """Real DeepSpeed ZeRO-1, 2 CPU processes, bf16: DeepSpeed skips the update; the guard stops the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, __file__, str(tmp_path), str(tokenizer_dir)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=420)
    output = result.stdout[-3000:] + result.stderr[-6000:]
    assert result.returncode != 0, output
    assert "NonFiniteGradientError: gradient norm is inf at global step 3 while the loss is finite" in output, output
    assert "DeepSpeed skipped the update" in output
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step=00000003.ckpt"]


@pytest.mark.parametrize(("precision", "bf16", "expected"), [
    ("16-mixed", False, "without bf16 support"), ("16-true", True, "Prefer trainer.precision=bf16-mixed"),
])
def test_fp16_on_gpu_warns(precision, bf16, expected):
    with pytest.warns(PrecisionWarning, match=expected):
        warn_about_precision(precision, "cuda", bf16_available=bf16)


@pytest.mark.parametrize(("precision", "accelerator"), [("bf16-mixed", "cuda"), ("16-mixed", "cpu"),
                                                        ("32-true", "cuda")])
def test_other_precisions_are_quiet(precision, accelerator, recwarn):
    warn_about_precision(precision, accelerator, bf16_available=False)
    assert not [w for w in recwarn if issubclass(w.category, PrecisionWarning)]


# ---------------------------------------------------------------------------------------------------------------
# The ZeRO-1 worker: PandaLM on the contract batches, CPUDeepSpeedStrategy(stage=1), 2 processes, bf16-mixed.

def _zero1_worker(out_dir: Path, tokenizer: str) -> None:
    from panda.data.tokenizer import load_tokenizer
    from panda.training.strategy import CPUDeepSpeedStrategy
    from tests.model.conftest import ContractDataModule

    torch.set_num_threads(1)
    config = {"vocab_size": len(load_tokenizer(tokenizer)), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}
    torch.manual_seed(0)
    model = InfiniteGradientAt(config=config, monitor_throughput=False)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=CPUDeepSpeedStrategy(stage=1), precision="bf16-mixed",
                      max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=out_dir,
                      callbacks=[AtomicCheckpoint(dirpath=str(out_dir / "checkpoints"), every_n_train_steps=1,
                                                  keep_last=1)])
    trainer.fit(model, ContractDataModule(tokenizer, rows=16))


if __name__ == "__main__":
    _zero1_worker(Path(sys.argv[1]), sys.argv[2])
