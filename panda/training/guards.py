"""Stops a run that can no longer produce good weights, and warns about a precision known to diverge.

A NaN or infinite loss poisons the weights at the very next optimizer step, and the next periodic checkpoint would
then overwrite the last good one. A non-finite *gradient norm* with a finite loss is just as fatal, only quieter:
DeepSpeed skips every such update (a ZeRO-1 run at lr 1e6 once ran 22 steps with an infinite norm, skipped them
all, exited 0 and rotated the good checkpoints away), and a plain optimizer would step on the clipped NaNs.

:class:`NonFiniteGuard` checks both once per *optimizer step*, not once per micro-batch: each micro-batch's loss is
tested on the device (``isfinite``, no host sync) as it reaches backward, and the flags of the accumulation window
are read in one collective right before the step — so no optimizer step is ever taken on a non-finite loss, and the
run stops naming the step, the micro-batch and its corpus sources while the newest checkpoint on disk is still the
last good one (the guard runs before checkpoint callbacks, which Lightning orders last). The gradient norm is
checked before the step where Lightning holds the gradients, and right after it under DeepSpeed (whose reduced
gradients exist only inside ``engine.step()``; the update it skipped changed nothing). Under fp16 a dynamic loss
scaler *expects* an occasional overflow and skips that step itself, so there the guard stops only after
``max_skipped_steps`` in a row. All ranks take the same decision, so no rank is left waiting in a collective.

The reference runs trained in bf16 throughout; fp16 fine-tuning of LLaMA on pre-Ampere GPUs (no bf16) overflows
and may diverge, which :func:`warn_about_precision` says before the run starts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteGradientError(RuntimeError):
    """The gradient norm became NaN or infinite while the loss was finite."""


class PrecisionWarning(UserWarning):
    """The chosen numeric precision is known to make LLaMA training diverge."""


RESUME_ADVICE = ("Resume from it with a lower learning rate, bf16 instead of fp16, or without the offending "
                 "source.")


def non_finite_loss_message(loss: float | None, *, step: int, epoch: int, batch_idx: int,
                            sources: list[str] | None) -> str:
    """What :class:`NonFiniteLossError` says; ``loss=None`` when the bad loss was on another rank."""
    where = f"at global step {step} (epoch {epoch}, micro-batch {batch_idx})"
    if loss is None:
        what = f"training loss became non-finite on another rank {where}"
    else:
        what = f"training loss is {loss} {where}; the batch came from sources: " \
               f"{', '.join(sources) if sources else '(unknown: the batch carries no source_ids)'}"
    return f"{what}. The run stopped before the optimizer step, so the last checkpoint on disk is the last good " \
           f"one. {RESUME_ADVICE}"


def raise_if_not_finite(loss: torch.Tensor, *, step: int, epoch: int, batch_idx: int,
                        sources: list[str] | Callable[[], list[str]], strategy=None) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` is NaN/inf on this rank or on any other, at once.

    This reads the loss on the host (a sync); the trainer uses :class:`NonFiniteGuard`, which checks once per
    optimizer step. Kept for code outside the training loop.
    """
    bad_here = not bool(torch.isfinite(loss.detach()).all())
    bad_anywhere = strategy.reduce_boolean_decision(bad_here, all=False) if strategy is not None else bad_here
    if bad_anywhere:
        names = (sources() if callable(sources) else sources) if bad_here else None
        raise NonFiniteLossError(non_finite_loss_message(loss.detach().float().item() if bad_here else None,
                                                         step=step, epoch=epoch, batch_idx=batch_idx, sources=names))


class NonFiniteGuard(Callback):
    """Stop on a non-finite loss or gradient norm, checked once per optimizer step (see module docstring).

    Also logs ``train/grad_norm`` (before clipping), which it computes anyway.

    Args:
        max_skipped_steps: Under fp16 (dynamic loss scaling), how many optimizer steps in a row may have a
            non-finite gradient norm before the run stops; bf16 and fp32 stop at the first.
    """

    def __init__(self, max_skipped_steps: int = 16) -> None:
        self.max_skipped_steps = max_skipped_steps
        self._window: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (batch_idx, loss, source_ids)
        self._batch: tuple[int, torch.Tensor | None] = (0, None)
        self._skipped = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch = (batch_idx, batch.get("source_ids") if isinstance(batch, dict) else None)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        batch_idx, source_ids = self._batch
        self._window.append((batch_idx, loss.detach(), source_ids))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)
        if deepspeed and not trainer.strategy.deepspeed_engine.is_gradient_accumulation_boundary():
            return  # DeepSpeed accumulates itself: Lightning calls this on every micro-batch
        window, self._window = self._window, []
        device = pl_module.device
        losses = torch.stack([loss.float().reshape(()) for _, loss, _ in window]) if window else \
            torch.zeros(0, device=device)
        bad_loss = ~torch.isfinite(losses).all()  # on the device: no sync
        norm = None if deepspeed else gradient_norm(pl_module)
        flags = torch.stack([bad_loss.float(), torch.tensor(0.0, device=device) if norm is None
                             else (~torch.isfinite(norm)).float()])
        flags = trainer.strategy.reduce(flags, reduce_op="sum")  # the one host sync of the step
        bad_loss_anywhere, bad_norm_anywhere = (value > 0 for value in flags.tolist())
        if bad_loss_anywhere:
            self._raise_loss_error(trainer, pl_module, window)
        if norm is not None:
            pl_module.log("train/grad_norm", norm)
            self._check_norm(trainer, bad_norm_anywhere, float(norm) if bad_norm_anywhere else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not isinstance(trainer.strategy, DeepSpeedStrategy) or self._window:
            return  # not DeepSpeed, or mid-window: no step was taken
        norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()  # the same on every rank
        if norm is None:
            return
        norm = float(norm)
        pl_module.log("train/grad_norm", norm)
        self._check_norm(trainer, not math.isfinite(norm), norm, after_step=True)

    def _check_norm(self, trainer, bad: bool, norm: float | None, after_step: bool = False) -> None:
        self._skipped = self._skipped + 1 if bad else 0
        allowed = self.max_skipped_steps if str(trainer.precision).startswith("16") else 0
        if self._skipped > allowed:
            step = trainer.global_step - (1 if after_step else 0)
            taken = "DeepSpeed skipped the update" if after_step else "the run stopped before the optimizer step"
            raise NonFiniteGradientError(
                f"gradient norm is {norm} at global step {step} while the loss is finite "
                f"({self._skipped} step(s) in a row); {taken}, so the last checkpoint on disk is the last good one. "
                "Lower the learning rate (or raise warmup), check trainer.gradient_clip_val, or train in bf16.")

    def _raise_loss_error(self, trainer, pl_module, window) -> None:
        bad = [(batch_idx, loss.item(), source_ids) for batch_idx, loss, source_ids in window
               if not bool(torch.isfinite(loss).all())]
        step, epoch = trainer.global_step, trainer.current_epoch
        if not bad:
            raise NonFiniteLossError(non_finite_loss_message(None, step=step, epoch=epoch,
                                                             batch_idx=window[-1][0] if window else 0, sources=None))
        batch_idx, loss, source_ids = bad[0]
        sources_of = getattr(pl_module, "_sources_of", None)
        sources = sources_of({"source_ids": source_ids}) if source_ids is not None and sources_of else []
        raise NonFiniteLossError(non_finite_loss_message(loss, step=step, epoch=epoch, batch_idx=batch_idx,
                                                         sources=sources))


def gradient_norm(module: torch.nn.Module) -> torch.Tensor | None:
    """2-norm of all gradients held by ``module``'s parameters (``None`` when none has one)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


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
