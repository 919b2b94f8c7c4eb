"""The LightningCLI behind ``lightning_main.py``.

Model and data are given by ``class_path`` in YAML (``configs/base.yaml`` names Panda's training module and data
module, ``configs/eval/*.yaml`` the evaluation ones), so ``fit``, ``validate`` and ``test`` share one program and
configs compose with repeated ``--config`` (last wins)::

    python lightning_main.py fit --config configs/base.yaml --config configs/experiments/panda_7b.yaml

TensorBoard is the default logger, writing under ``runs/<name>/version_N`` next to the resolved ``config.yaml``.
:func:`parse` reads a configuration the way ``fit`` would, without building anything (tests parse every YAML
with it).
"""

from __future__ import annotations

import os

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {"class_path": f"{TensorBoardLogger.__module__}.{TensorBoardLogger.__name__}",
               "init_args": {"save_dir": "runs", "name": "panda"}},
    "enable_progress_bar": True,
}


class PandaCLI(LightningCLI):
    """LightningCLI with Panda's defaults (TensorBoard under ``runs/``, progress bar)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})


class _ParseOnlyCLI(PandaCLI):
    def instantiate_classes(self) -> None:
        """Parsing (types, required keys, class paths) only: no model weights, data or trainer are built."""


def _cli_kwargs() -> dict:
    return {"subclass_mode_model": True, "subclass_mode_data": True, "save_config_kwargs": {"overwrite": True}}


def main(args: list[str] | None = None, run: bool = True) -> PandaCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return PandaCLI(LightningModule, LightningDataModule, args=args, run=run, **_cli_kwargs())


def parse(args: list[str]) -> Namespace:
    """The configuration ``lightning_main.py <args>`` would run with, checked but not instantiated.

    Args:
        args: Command-line arguments without the subcommand's program name, e.g.
            ``["--config", "configs/base.yaml", "--config", "configs/experiments/panda_7b.yaml"]`` (parsed as
            ``fit``).
    """
    return _ParseOnlyCLI(LightningModule, LightningDataModule, args=args, run=False, **_cli_kwargs()).config
