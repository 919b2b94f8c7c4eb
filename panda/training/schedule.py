"""The learning-rate schedule, sized in *optimizer steps*.

The reference trainer sized its schedule from the number of training examples as if each were an optimizer step:
with 14.8M examples, per-GPU batch 4, accumulation 128 and 16 GPUs the run made ~1,800 optimizer steps while the
scheduler expected 14.8M, so the 1 % warmup (148k steps) never ended and the learning rate never reached its peak.

Here the length of the run comes from Lightning's ``trainer.estimated_stepping_batches``, which already accounts
for the data loader's per-rank length (after the distributed sampler split it by world size), gradient
accumulation, ``max_epochs`` and ``max_steps``. :func:`planned_optimizer_steps` spells the same arithmetic out for
documentation and tests; the schedule itself is one of ``transformers``' schedulers, chosen by name in YAML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import get_scheduler

LRSchedule = Literal["linear", "cosine", "constant"]

_TRANSFORMERS_NAME = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class SchedulePlan:
    """How many optimizer steps the run makes and how many of them warm up.

    Args:
        total_steps: Optimizer steps of the whole run (all epochs), the length of the decay.
        warmup_steps: Steps of linear warmup from 0 to the peak learning rate.
    """

    total_steps: int
    warmup_steps: int

    def describe(self) -> str:
        return f"LR schedule: {self.total_steps} optimizer steps, {self.warmup_steps} of them warmup"


def planned_optimizer_steps(num_samples: int, micro_batch_size: int, world_size: int, accumulate_grad_batches: int,
                            epochs: int = 1, drop_last: bool = False) -> int:
    """Optimizer steps of a run, computed as Lightning does for a map-style dataset with a distributed sampler.

    Each rank sees ``ceil(num_samples / world_size)`` samples per epoch (the sampler pads to equal shares), makes
    ``ceil`` (or ``floor`` with ``drop_last``) of that over ``micro_batch_size`` micro-batches, and steps the
    optimizer every ``accumulate_grad_batches`` of them, plus once at the end of an epoch for a partial
    accumulation.

    Args:
        num_samples: Rows per epoch (packed rows, or examples without packing).
        micro_batch_size: Rows per device per forward pass (``data.batch_size``).
        world_size: Number of processes (``num_nodes * devices``).
        accumulate_grad_batches: Micro-batches per optimizer step.
        epochs: Number of epochs.
        drop_last: Whether the data loader drops an incomplete last micro-batch.
    """
    per_rank = math.ceil(num_samples / world_size)
    round_batches = math.floor if drop_last else math.ceil
    micro_batches = round_batches(per_rank / micro_batch_size)
    return math.ceil(micro_batches / accumulate_grad_batches) * epochs


def plan_schedule(total_steps: int | float, warmup_fraction: float, *,
                  warmup_steps: int | None = None) -> SchedulePlan:
    """Turn Lightning's estimate of the run length into a :class:`SchedulePlan`.

    Args:
        total_steps: ``trainer.estimated_stepping_batches`` (``inf`` when the run has no bound).
        warmup_fraction: Share of the optimizer steps spent warming up, in ``[0, 1)``.
        warmup_steps: Absolute warmup steps instead of the fraction (``None``: use the fraction); must be shorter
            than the run.
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if warmup_steps is not None and warmup_steps < 0:
        raise ValueError(f"model.warmup_steps must be >= 0 or null, got {warmup_steps}")
    if not math.isfinite(total_steps) or total_steps < 1:
        raise ValueError(
            f"cannot size the learning-rate schedule: the trainer estimates {total_steps} optimizer steps. "
            "Set trainer.max_epochs or trainer.max_steps, and give the training data loader a length."
        )
    total_steps = int(total_steps)
    if warmup_steps is not None:
        if warmup_steps >= total_steps:
            raise ValueError(f"model.warmup_steps={warmup_steps} is not shorter than the run's {total_steps} "
                             "optimizer steps: the learning rate would never reach its peak")
        return SchedulePlan(total_steps=total_steps, warmup_steps=warmup_steps)
    return SchedulePlan(total_steps=total_steps, warmup_steps=math.ceil(warmup_fraction * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                    plan: SchedulePlan) -> torch.optim.lr_scheduler.LambdaLR:
    """``transformers``' scheduler for ``schedule``: linear warmup, then linear/cosine decay to 0 or constant.

    Args:
        optimizer: The optimizer whose learning rate (its ``lr`` is the peak) the scheduler drives.
        schedule: ``"linear"`` (Panda's reference), ``"cosine"`` or ``"constant"`` after warmup.
        plan: Total and warmup steps.
    """
    return get_scheduler(_TRANSFORMERS_NAME[schedule], optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps)
