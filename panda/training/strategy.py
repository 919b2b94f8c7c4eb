"""Real DeepSpeed ZeRO on CPU, so that CI exercises the same code path the GPU cluster runs.

On GPUs Panda uses Lightning's own :class:`~lightning.pytorch.strategies.DeepSpeedStrategy` unchanged
(``configs/strategy/deepspeed_zero{1,2,3}.yaml``). Lightning 2.6 refuses it on CPU, although DeepSpeed itself runs
there (its CPU accelerator talks gloo). The refusal sits in exactly three places:

1. ``setup_environment`` raises unless the accelerator is a ``CUDAAccelerator``;
2. ``setup_distributed`` checks that the devices' indices are ``0..n-1`` — CPU devices have index ``None``;
3. ``deepspeed.initialize`` receives ``device_rank=root_device.index`` — ``None`` on CPU, and DeepSpeed treats a
   negative or missing rank as "not distributed": world size 1, so ZeRO would silently partition nothing.

:class:`CPUDeepSpeedStrategy` bypasses only these, and only when the accelerator is the CPU: it skips the CUDA
check (1), and while (2) and (3) run it presents the CPU devices as ``cpu:0 .. cpu:n-1`` (their local ranks), which
is what those two places read. Everything else — ZeRO partitioning, checkpoint layout, bf16 — is DeepSpeed's and
Lightning's own code. On a CUDA accelerator the class behaves exactly like its parent.

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
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.nn import Module


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` that also runs on CPU processes over gloo (see module docstring).

    Takes the same arguments as :class:`~lightning.pytorch.strategies.DeepSpeedStrategy` (``stage``, ``config``,
    ``offload_optimizer``, ...). Use with ``accelerator: cpu``, ``devices: N`` and ``precision: bf16-mixed`` or
    ``32-true``.
    """

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
