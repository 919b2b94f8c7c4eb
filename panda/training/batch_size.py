"""The global batch: rows (or tokens) per optimizer step, fixed in the config, whatever the cluster.

The reference fixed the *accumulation* (128) and told users with fewer GPUs to retune it by hand; its optimizer
step then changed size with the world size (8 GPUs: half the batch, twice the steps, another learning rate in
effect). Here a config states what the optimizer should see — ``rows`` per step (Panda-7B: 8,192 = 4 rows × 128 ×
16 GPUs), or ``tokens`` per step (packed rows are full, so tokens = rows × ``max_seq_length``) — and
:class:`GlobalBatchSize` derives the gradient accumulation for the actual run::

    accumulate_grad_batches = global rows / (micro-batch rows × world size)

at set-up, before the learning-rate schedule and the DeepSpeed config read it, prints the arithmetic once, and
stops with the numbers when it does not divide. Panda-7B on 8 GPUs then optimizes exactly as on 16 (256 micro-
batches per step instead of 128), with the same number of optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from panda.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's rows are made: ``micro_batch × world_size × accumulation``."""

    rows: int
    micro_batch: int
    world_size: int
    accumulation: int
    tokens: int | None = None

    def describe(self) -> str:
        tokens = f" ({self.tokens:,} tokens of {self.tokens // self.rows} per row)" if self.tokens else ""
        return (f"global batch: {self.rows:,} rows per optimizer step{tokens} = micro-batch {self.micro_batch} × "
                f"world size {self.world_size} × gradient accumulation {self.accumulation}")


def plan_batch(*, micro_batch: int, world_size: int, rows: int | None = None, tokens: int | None = None,
               max_seq_length: int | None = None) -> BatchPlan:
    """The accumulation that makes ``rows`` (or ``tokens``) per optimizer step; a :class:`ConfigError` with the
    numbers when it does not divide.

    Args:
        micro_batch: Rows per device per forward pass (``data.batch_size``).
        world_size: Processes (``trainer.num_nodes × trainer.devices``).
        rows: Rows per optimizer step (exclusive with ``tokens``).
        tokens: Tokens per optimizer step; a row holds ``max_seq_length`` tokens (packed rows are full).
        max_seq_length: Tokens per row (``data.max_seq_length``), needed with ``tokens``.
    """
    if (rows is None) == (tokens is None):
        raise ConfigError("GlobalBatchSize: give exactly one of rows (rows per optimizer step) or tokens")
    if tokens is not None:
        if not max_seq_length:
            raise ConfigError("GlobalBatchSize.tokens needs data.max_seq_length (tokens per row)")
        if tokens % max_seq_length:
            raise ConfigError(f"GlobalBatchSize.tokens={tokens:,} is not a whole number of {max_seq_length}-token "
                              f"rows ({tokens / max_seq_length:.2f}); use a multiple of {max_seq_length}")
        rows = tokens // max_seq_length
    if rows < 1 or micro_batch < 1 or world_size < 1:
        raise ConfigError(f"GlobalBatchSize: rows ({rows}), micro-batch ({micro_batch}) and world size "
                          f"({world_size}) must be positive")
    per_pass = micro_batch * world_size
    if rows % per_pass:
        fitting = sorted({max(per_pass, rows // per_pass * per_pass), -(-rows // per_pass) * per_pass})
        raise ConfigError(
            f"global batch {rows:,} rows per optimizer step does not divide into micro-batch {micro_batch} × world "
            f"size {world_size} = {per_pass} rows per pass ({rows / per_pass:.2f} passes); use "
            f"{' or '.join(f'{r:,}' for r in fitting)} rows (or another data.batch_size)")
    return BatchPlan(rows=rows, micro_batch=micro_batch, world_size=world_size, accumulation=rows // per_pass,
                     tokens=tokens)


class GlobalBatchSize(Callback):
    """Derive ``trainer.accumulate_grad_batches`` from a fixed global batch (see module docstring).

    Args:
        rows: Rows per optimizer step, over all devices and accumulated micro-batches.
        tokens: Tokens per optimizer step instead (rows of ``data.max_seq_length`` tokens).
    """

    def __init__(self, rows: int | None = None, tokens: int | None = None) -> None:
        if (rows is None) == (tokens is None):
            raise ConfigError("GlobalBatchSize: give exactly one of rows (rows per optimizer step) or tokens")
        self.rows, self.tokens = rows, tokens
        self.plan: BatchPlan | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        micro_batch = getattr(datamodule, "batch_size", None)
        if micro_batch is None:
            raise ConfigError("GlobalBatchSize needs a data module with batch_size (rows per micro-batch)")
        self.plan = plan_batch(micro_batch=micro_batch, world_size=trainer.world_size, rows=self.rows,
                               tokens=self.tokens, max_seq_length=getattr(datamodule, "max_seq_length", None))
        configured = trainer.accumulate_grad_batches
        if configured not in (1, self.plan.accumulation):
            raise ConfigError(f"trainer.accumulate_grad_batches={configured} contradicts GlobalBatchSize "
                              f"({self.plan.describe()}); remove one of the two")
        trainer.accumulate_grad_batches = self.plan.accumulation
        rank_zero_info(self.plan.describe())
