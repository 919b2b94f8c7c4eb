"""Throughput in *useful* tokens and model FLOPs utilisation (MFU), through Lightning's ``ThroughputMonitor``.

Tokens per second counted over padded batches flatter a pipeline that pads every example to 2048 as the reference
did; here only real (non-pad, ``attention_mask == 1``) tokens count, and "samples" are documents (a packed row holds
several). The logged scalars are Lightning's: ``train/device/items_per_sec`` (useful tokens/s per device),
``train/device/samples_per_sec`` (documents/s), ``train/device/flops_per_sec`` and ``train/device/mfu``.

FLOPs follow the PaLM appendix-B convention of *model* FLOPs (activation recomputation is not counted, so MFU does
not improve by recomputing): per trained token, ``2N`` forward + ``2N`` backward through activations + ``2N`` for
weight gradients of the trainable parameters (``6N`` when everything trains, less with LoRA or embedding-only),
plus attention scores ``12 · layers · hidden · context`` where ``context`` is the row length (the attention kernels
compute the full row even when a block-diagonal mask hides other documents). ``N`` excludes the input embedding,
a lookup. :func:`training_flops_per_token` agrees with ``measure_flops`` on a real model (see the tests).

The peak comes from Lightning's table of GPUs for the trainer's precision; ``peak_flops`` overrides it for a device
missing from the table (CPUs have no entry, so MFU is not logged there unless given).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import ThroughputMonitor


def useful_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Number of real (non-padding) tokens in a BATCH CONTRACT batch."""
    return int(batch["attention_mask"].sum())


def documents(batch: dict[str, torch.Tensor]) -> int:
    """Number of documents in a batch: a document starts where ``position_ids == 0`` on a real token."""
    starts = (batch["position_ids"] == 0) & (batch["attention_mask"] == 1)
    return max(int(starts.sum()), 1)


def training_flops_per_token(num_params: int, num_trainable: int, num_layers: int, hidden_size: int,
                             context: int) -> int:
    """Model FLOPs of one training token (forward + backward), PaLM convention.

    Args:
        num_params: Parameters taking part in matrix multiplies (all but the input embedding).
        num_trainable: Of those, the ones receiving weight gradients.
        num_layers: Decoder layers.
        hidden_size: Model width (query heads × head size).
        context: Length of the attention rows (the packed row length).
    """
    return 4 * num_params + 2 * num_trainable + 12 * num_layers * hidden_size * context


class PandaThroughputMonitor(ThroughputMonitor):
    """``ThroughputMonitor`` that counts useful tokens and documents of BATCH CONTRACT batches.

    The module provides ``flops_per_batch`` (its model FLOPs on the tokens of the last batch).

    Args:
        window_size: Number of batches the rates are averaged over.
        peak_flops: Peak FLOP/s of one device for MFU; ``None`` takes it from Lightning's table of GPUs.
    """

    def __init__(self, window_size: int = 20, peak_flops: float | None = None) -> None:
        super().__init__(batch_size_fn=documents, length_fn=useful_tokens, window_size=window_size)
        self.peak_flops = peak_flops

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops is not None:
            self.available_flops = int(self.peak_flops)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
