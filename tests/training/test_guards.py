"""A NaN/inf loss stops the run before the step, naming step and sources, keeping the last good checkpoint;
fp16 on a GPU gets a clear warning."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from panda.model import PandaLM
from panda.training.checkpoint import AtomicCheckpoint
from panda.training.guards import NonFiniteLossError, PrecisionWarning, raise_if_not_finite, warn_about_precision
from tests.model.conftest import contract_datamodule, tiny_config  # noqa: F401 (fixtures)


class PoisonedAt(PandaLM):
    """Produces a NaN loss at one global step (as an overflow would)."""

    bad_step = 3

    def _losses(self, batch):
        loss, *rest = super()._losses(batch)
        if self.training and self.global_step == self.bad_step:
            loss = loss * float("nan")
        return (loss, *rest)


def test_message_names_step_and_sources():
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at global step 7 \(epoch 1, micro-batch 3\).*coig"):
        raise_if_not_finite(torch.tensor(float("inf")), step=7, epoch=1, batch_idx=3, sources=["coig", "wiki"])
    raise_if_not_finite(torch.tensor(2.5), step=7, epoch=1, batch_idx=3, sources=[])


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, contract_datamodule, tmp_path):
    torch.manual_seed(0)
    model = PoisonedAt(config=tiny_config)
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
