"""Accuracy-style metrics that count each question exactly once, on one process or many.

Under DDP or DeepSpeed, Lightning's ``DistributedSampler`` pads the evaluation set so every rank gets the same
number of questions: with 5 questions on 2 ranks, rank 1 scores question 0 a second time. A plain running mean
would count it twice. :class:`QuestionMean` therefore keeps the *question index* beside each 0/1 value
(torchmetrics ``cat`` states, gathered across ranks on ``compute``) and averages over distinct indices only — the
padded duplicate is the same question with the same prompt and the same greedy result, so keeping its first
occurrence is exact.

    rank 0: index [0, 2, 4]  value [1, 0, 1]
    rank 1: index [1, 3, 0]  value [0, 1, 1]     ← index 0 again (sampler padding)
    compute: distinct index [0, 1, 2, 3, 4] → mean 3/5, count 5
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``index`` (sorted by value)."""
    distinct, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((distinct.numel(),), index.numel(), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


class QuestionMean(Metric):
    """Mean of a per-question value (e.g. correct: 1/0) over distinct question indices.

    ``update(index, value)`` with two 1-D tensors of the same length; ``compute()`` returns
    ``{"mean": tensor, "count": tensor}`` (mean is NaN when nothing was scored).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("value", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, value: torch.Tensor) -> None:
        index, value = torch.as_tensor(index).reshape(-1), torch.as_tensor(value).reshape(-1)
        if index.shape != value.shape:
            raise ValueError(f"index {tuple(index.shape)} and value {tuple(value.shape)} must have the same shape")
        self.index.append(index.to(self.device, torch.long))
        self.value.append(value.to(self.device, torch.float32))

    def compute(self) -> dict[str, torch.Tensor]:
        if isinstance(self.index, list) and not self.index:
            return {"mean": torch.tensor(float("nan")), "count": torch.tensor(0)}
        index, value = dim_zero_cat(self.index), dim_zero_cat(self.value)
        kept = value[first_occurrences(index)]
        return {"mean": kept.double().mean(), "count": torch.tensor(kept.numel())}
