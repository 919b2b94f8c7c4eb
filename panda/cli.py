"""The LightningCLI behind ``lightning_main.py``.

Model and data are given by ``class_path`` in YAML (``configs/base.yaml`` names Panda's training module and data
module, ``configs/eval/*.yaml`` the evaluation ones), so ``fit``, ``validate`` and ``test`` share one program and
configs compose with repeated ``--config`` (last wins).
"""

from __future__ import annotations

import os

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class PandaCLI(LightningCLI):
    """LightningCLI with Panda's argument links."""

    def add_arguments_to_parser(self, parser) -> None:
        pass


def main(args: list[str] | None = None, run: bool = True) -> PandaCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return PandaCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, args=args, run=run,
    )
