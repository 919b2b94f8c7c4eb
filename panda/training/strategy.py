"""Real DeepSpeed ZeRO on CPU, so that CI exercises the same code path the GPU cluster runs.

On GPUs Panda's :class:`PandaDeepSpeedStrategy` is Lightning's own
:class:`~lightning.pytorch.strategies.DeepSpeedStrategy` (``configs/strategy/deepspeed_zero{1,2,3}.yaml``) plus
the lost-rank handling below. Lightning 2.6 refuses it on CPU, although DeepSpeed itself runs
there (its CPU accelerator talks gloo). The refusal sits in exactly three places:

1. ``setup_environment`` raises unless the accelerator is a ``CUDAAccelerator``;
2. ``setup_distributed`` checks that the devices' indices are ``0..n-1`` — CPU devices have index ``None``;
3. ``deepspeed.initialize`` receives ``device_rank=root_device.index`` — ``None`` on CPU, and DeepSpeed treats a
   negative or missing rank as "not distributed": world size 1, so ZeRO would silently partition nothing.

:class:`PandaDeepSpeedStrategy` (also importable as ``CPUDeepSpeedStrategy``, the name the CPU configs use)
bypasses only these, and only when the accelerator is the CPU: it skips the CUDA
check (1), and while (2) and (3) run it presents the CPU devices as ``cpu:0 .. cpu:n-1`` (their local ranks), which
is what those two places read. Everything else — ZeRO partitioning, checkpoint layout, bf16 — is DeepSpeed's and
Lightning's own code. On a CUDA accelerator the class behaves exactly like its parent.

Both Panda strategies (:class:`PandaDeepSpeedStrategy`, and :class:`PandaDDPStrategy` for plain DDP) also end the
job when a rank dies or freezes, naming it, instead of hanging: ``collective_timeout`` and ``probe_timeout``
(``panda/training/failures.py`` explains how).

This touches private Lightning methods, so ``lightning`` is pinned in ``setup.cfg`` and
``tests/training/test_strategy.py`` fails loudly, naming this file, if an upgrade moves any of the three places.
DeepSpeed refuses fp16 on CPU; use ``precision: bf16-mixed`` (or 32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from torch.nn import Module

from panda.training.failures import RankProbe, end_job, is_collective_failure, lost_rank_message, \
    newest_checkpoint, set_collective_timeout


class LostRankHandling:
    """Mixin for Lightning's parallel strategies: a short collective timeout during training, and a failed
    collective ends the job with one line naming the lost rank (``panda.training.failures``).

    ``collective_timeout`` (seconds; ``None`` keeps the process group's own, 30 min) applies from the first training
    step on: set-up (checkpoint loading, data cache, DeepSpeed op compilation) keeps the long one. A frozen rank ends
    the job after ``collective_timeout + probe_timeout`` seconds at most.
    """

    def _init_lost_rank_handling(self, collective_timeout: float | None, probe_timeout: float) -> None:
        if collective_timeout is not None and collective_timeout <= 0:
            raise ValueError(f"trainer.strategy.collective_timeout={collective_timeout}: expected seconds > 0")
        if probe_timeout <= 0:
            raise ValueError(f"trainer.strategy.probe_timeout={probe_timeout}: expected seconds > 0")
        self.collective_timeout = collective_timeout
        self.probe_timeout = probe_timeout
        self._rank_probe: RankProbe | None = None

    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.world_size > 1 and self._rank_probe is None:
            self._rank_probe = RankProbe()  # every rank, same point: creating the side group is a collective

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.collective_timeout is not None and self.world_size > 1:
            set_collective_timeout(self.collective_timeout)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if self._rank_probe is None or not is_collective_failure(exception):
            return
        states = self._rank_probe.verdict(self.probe_timeout)
        trainer = self.lightning_module.trainer
        description = self._rank_probe.describe(states, self.collective_timeout, trainer.global_step)
        end_job(lost_rank_message(self.global_rank, description, newest_checkpoint(trainer)), self.launcher,
                trainer.loggers)


class PandaDeepSpeedStrategy(LostRankHandling, DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` that also runs on CPU processes over gloo (see module docstring).

    Takes the same arguments as :class:`~lightning.pytorch.strategies.DeepSpeedStrategy` (``stage``, ``config``,
    ``offload_optimizer``, ...). Use with ``accelerator: cpu``, ``devices: N`` and ``precision: bf16-mixed`` or
    ``32-true``.

    Args:
        collective_timeout: Seconds a training collective may wait for the other ranks before the job ends
            naming the silent rank; ``None`` keeps the process group's 30 minutes.
        probe_timeout: Seconds the survivors spend finding out which rank is lost.
        **kwargs: :class:`~lightning.pytorch.strategies.DeepSpeedStrategy`'s arguments.
    """

    def __init__(self, *args: Any, collective_timeout: float | None = None, probe_timeout: float = 10.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_lost_rank_handling(collective_timeout, probe_timeout)

    @property
    def _on_cpu(self) -> bool:
        return isinstance(self.accelerator, CPUAccelerator)

    @contextmanager
    def _indexed_cpu_devices(self) -> Iterator[None]:
        """Give the CPU devices the indices Lightning's DeepSpeed code expects (their local ranks) for one call."""
        if not self._on_cpu or self.parallel_devices is None:
            yield
            return
        devices = self.parallel_devices
        self.parallel_devices = [torch.device("cpu", index) for index in range(len(devices))]
        try:
            yield
        finally:
            self.parallel_devices = devices

    def setup_environment(self) -> None:
        from panda.model.lora import refuse_partitioned_4bit

        zero = self.config.get("zero_optimization") or {}
        refuse_partitioned_4bit(getattr(self.lightning_module, "lora", None), zero.get("stage"))
        if not self._on_cpu:
            super().setup_environment()
            return
        # check (1): skip only DeepSpeedStrategy's CUDA-accelerator check, keep DDPStrategy's setup
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        with self._indexed_cpu_devices():  # check (2)
            super().setup_distributed()

    def _setup_model_and_optimizer(self, model: Module, optimizer: Any, lr_scheduler: Any = None) -> Any:
        with self._indexed_cpu_devices():  # check (3), training engine
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _initialize_deepspeed_inference(self, model: Module) -> None:
        with self._indexed_cpu_devices():  # check (3), inference engine (validate/test)
            super()._initialize_deepspeed_inference(model)


CPUDeepSpeedStrategy = PandaDeepSpeedStrategy


class PandaDDPStrategy(LostRankHandling, DDPStrategy):
    """Lightning's ``DDPStrategy`` that ends the job naming a dead or frozen rank (see :class:`LostRankHandling`).

    Args:
        collective_timeout: As :class:`PandaDeepSpeedStrategy`.
        probe_timeout: As :class:`PandaDeepSpeedStrategy`.
        **kwargs: :class:`~lightning.pytorch.strategies.DDPStrategy`'s arguments.
    """

    def __init__(self, *args: Any, collective_timeout: float | None = None, probe_timeout: float = 10.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_lost_rank_handling(collective_timeout, probe_timeout)
