"""Global batch size → gradient accumulation for the actual world size; the numbers in every error."""

from __future__ import annotations

import lightning as L
import pytest

from panda.errors import ConfigError
from panda.model import PandaLM
from panda.training.batch_size import GlobalBatchSize, plan_batch
from tests.model.conftest import ContractDataModule, tiny_config  # noqa: F401 - fixture


def test_panda_7b_optimizes_the_same_on_8_and_16_gpus():
    on16 = plan_batch(micro_batch=4, world_size=16, rows=8192)
    on8 = plan_batch(micro_batch=4, world_size=8, rows=8192)
    assert (on16.accumulation, on8.accumulation) == (128, 256)
    assert on16.describe() == ("global batch: 8,192 rows per optimizer step = micro-batch 4 × world size 16 × "
                               "gradient accumulation 128")
    by_tokens = plan_batch(micro_batch=4, world_size=16, tokens=6_553_600, max_seq_length=2048)
    assert (by_tokens.rows, by_tokens.accumulation) == (3200, 50)
    assert "6,553,600 tokens of 2048 per row" in by_tokens.describe()


def test_a_global_batch_that_does_not_divide_says_the_numbers():
    with pytest.raises(ConfigError, match=r"global batch 8,192 rows per optimizer step does not divide into "
                                          r"micro-batch 4 × world size 12 = 48 rows per pass \(170.67 passes\); "
                                          r"use 8,160 or 8,208 rows"):
        plan_batch(micro_batch=4, world_size=12, rows=8192)
    with pytest.raises(ConfigError, match=r"tokens=1,000 is not a whole number of 64-token rows \(15.62\)"):
        plan_batch(micro_batch=1, world_size=1, tokens=1000, max_seq_length=64)
    with pytest.raises(ConfigError, match="exactly one of rows"):
        GlobalBatchSize(rows=8, tokens=64)


@pytest.mark.parametrize("rows, accumulation", [(4, 2), (8, 4)])
def test_callback_sets_the_accumulation_before_the_schedule(tokenizer_dir, tiny_config, rows, accumulation,
                                                            capsys):
    data = ContractDataModule(str(tokenizer_dir), batch_size=2, rows=8)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[GlobalBatchSize(rows=rows)])
    module = PandaLM(config=tiny_config, monitor_throughput=False)
    trainer.fit(module, data)
    assert trainer.accumulate_grad_batches == accumulation
    assert trainer.global_step == 4 // accumulation  # 4 micro-batches of 2 rows
    assert module.schedule_plan.total_steps == 4 // accumulation


def test_callback_refuses_a_contradicting_accumulation(tokenizer_dir, tiny_config):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=3,
                        callbacks=[GlobalBatchSize(rows=4)])
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=3 contradicts GlobalBatchSize"):
        trainer.fit(PandaLM(config=tiny_config, monitor_throughput=False),
                    ContractDataModule(str(tokenizer_dir), batch_size=2, rows=8))
