"""Stops a run that can no longer produce good weights, and warns about a precision known to diverge.

A NaN or infinite loss poisons the weights at the very next optimizer step, and the next periodic checkpoint would
then overwrite the last good one. :func:`raise_if_not_finite` is called by the module right after the loss is
computed — before ``backward``, the optimizer step and ``on_train_batch_end`` (where checkpoint callbacks save) —
so the run stops with the step and the corpus sources of the offending batch, and the newest checkpoint on disk is
still the last good one. All ranks take the same decision, so no rank is left waiting in a collective.

The reference runs trained in bf16 throughout; fp16 fine-tuning of LLaMA on pre-Ampere GPUs (no bf16) overflows
and may diverge, which :func:`warn_about_precision` says before the run starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class PrecisionWarning(UserWarning):
    """The chosen numeric precision is known to make LLaMA training diverge."""


def raise_if_not_finite(loss: torch.Tensor, *, step: int, epoch: int, batch_idx: int,
                        sources: list[str] | Callable[[], list[str]], strategy=None) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` is NaN/inf on this rank or on any other.

    Args:
        loss: This rank's loss for the current micro-batch.
        step: Global optimizer step about to be taken.
        epoch: Current epoch.
        batch_idx: Micro-batch index within the epoch.
        sources: Names of the corpus sources present in this rank's batch, or a function returning them (called
            only when the loss is not finite, so the training hot path does not pay for it).
        strategy: The trainer's strategy; when given, the decision is shared across ranks.
    """
    bad_here = not bool(torch.isfinite(loss.detach()).all())
    bad_anywhere = bad_here
    if strategy is not None:
        bad_anywhere = strategy.reduce_boolean_decision(bad_here, all=False)
    if not bad_anywhere:
        return
    where = f"at global step {step} (epoch {epoch}, micro-batch {batch_idx})"
    if bad_here:
        if callable(sources):
            sources = sources()
        what = f"training loss is {loss.detach().float().item()} {where}; the batch came from sources: " \
               f"{', '.join(sources) if sources else '(unknown: the batch carries no source_ids)'}"
    else:
        what = f"training loss became non-finite on another rank {where}"
    raise NonFiniteLossError(
        f"{what}. The run stopped before the optimizer step, so the last checkpoint on disk is the last good one. "
        "Resume from it with a lower learning rate, bf16 instead of fp16, or without the offending source."
    )


def bf16_supported() -> bool:
    """Whether the current CUDA device computes in bfloat16 (Ampere or newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def warn_about_precision(precision: str, accelerator_type: str, *, bf16_available: bool | None = None) -> None:
    """Warn when ``precision`` is fp16 on a GPU: it may diverge, especially where bf16 is missing.

    Args:
        precision: The trainer's precision setting (``"bf16-mixed"``, ``"16-mixed"``, ``"32-true"``, ...).
        accelerator_type: ``"cuda"``, ``"cpu"``, ...
        bf16_available: Whether the GPU supports bf16 (probed when ``None``).
    """
    if accelerator_type != "cuda" or not str(precision).startswith("16"):
        return
    if bf16_available is None:
        bf16_available = bf16_supported()
    if bf16_available:
        warnings.warn(
            f"trainer.precision={precision!r}: this GPU supports bf16, which Panda's reference runs used; fp16 "
            "fine-tuning of LLaMA may overflow and diverge. Prefer trainer.precision=bf16-mixed.",
            PrecisionWarning, stacklevel=2,
        )
    else:
        warnings.warn(
            f"trainer.precision={precision!r} on a GPU without bf16 support (pre-Ampere): fp16 fine-tuning of LLaMA "
            "is known to overflow and diverge. Watch train/loss closely (the NaN guard stops the run), keep the "
            "learning rate low, or train in 32-true / on an Ampere or newer GPU with bf16-mixed.",
            PrecisionWarning, stacklevel=2,
        )
