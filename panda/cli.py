"""The ``panda`` command: one program for every job, one argument style (jsonargparse) throughout.

::

    panda fit|validate|test --config configs/base.yaml --config configs/experiments/panda_7b.yaml   # LightningCLI
    panda data stats|preview|prepare --config ...      # the training data exactly as `fit` sees it
    panda eval table runs/eval/*                        # evaluation runs → markdown tables
    panda weights delta-make|delta-apply|export|...     # weight tools
    panda generate MODEL --input prompts.jsonl ...      # batch generation
    panda chat MODEL                                    # talk to a model in the terminal

``fit``, ``validate`` and ``test`` are Lightning's own ``LightningCLI`` (``lightning_main.py`` runs the same
program): model and data are given by ``class_path`` in YAML, configs compose with repeated ``--config`` (last
wins), TensorBoard writes under ``runs/<name>/version_N`` next to the resolved ``config.yaml``. The other command
groups live in their packages (``python -m panda.data`` … keeps working) and are listed in :data:`COMMANDS`.

A mistake in the configuration or on the command line is reported in one or two lines naming the key, with a
"did you mean" for a misspelt key (:mod:`panda.cli_errors`); ``--debug`` or ``PANDA_DEBUG=1`` shows everything.
:func:`parse` reads a configuration the way ``fit`` would, without building anything (tests parse every YAML with
it).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from panda.errors import ConfigError, debugging, did_you_mean, report_user_errors, strip_debug_flag

LIGHTNING_COMMANDS = ("fit", "validate", "test")
"""Run by LightningCLI. ``predict`` is not offered: generation is ``panda generate``."""

COMMANDS = {
    "data": "panda.data.__main__:main",
    "eval": "panda.eval.__main__:main",
    "weights": "panda.weights.__main__:main",
    "generate": "panda.generate.__main__:main",
    "chat": "panda.generate.chat:main",
}
"""Command groups outside LightningCLI: name → ``"module:function"``, the function taking ``argv`` and returning an
exit status."""

DESCRIPTIONS = {
    "fit": "train (LightningCLI: --config YAML layers, any key overridable)",
    "validate": "validation loss, or a benchmark evaluation with configs/eval/*.yaml",
    "test": "test loss on the data module's test split",
    "data": "stats | preview | prepare: the training data exactly as fit sees it",
    "eval": "table: evaluation runs as markdown tables",
    "weights": "delta-make | delta-apply | export | extend-vocab | ...: weight tools",
    "generate": "batch generation from a JSON-lines file of prompts or conversations",
    "chat": "talk to a model in the terminal",
}

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {"class_path": f"{TensorBoardLogger.__module__}.{TensorBoardLogger.__name__}",
               "init_args": {"save_dir": "runs", "name": "panda"}},
    "enable_progress_bar": True,
}


DATA_TO_MODEL = (("tokenizer_path", "tokenizer_dir"), ("max_seq_length", "max_seq_length"),
                 ("source_names", "source_names"))
"""``(data module attribute, PandaLM argument)`` pairs linked by :class:`PandaCLI`."""


def _data_attribute(name: str):
    def value(data):
        found = getattr(data, name, None)
        return list(found) if isinstance(found, (list, tuple)) else found

    value.__name__ = f"data_{name}"
    return value


def _data_chat_format(data) -> dict | None:
    """The chat format the data's sources render prompts with (None for plain text or a non-training data module)."""
    from panda.data.chat_format import training_chat_format

    sources = getattr(data, "sources", None)
    found = training_chat_format(sources) if sources else None
    return found.as_dict() if found is not None else None


class PandaCLI(LightningCLI):
    """LightningCLI with Panda's defaults (TensorBoard under ``runs/``, progress bar)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
        # what the training module needs to know about the data flows one way, data module → model, when both
        # are built; a model or data class without the attribute or argument (the evaluators) is left alone
        for attribute, argument in DATA_TO_MODEL:
            parser.link_arguments("data", f"model.init_args.{argument}", compute_fn=_data_attribute(attribute),
                                  apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.chat_format", compute_fn=_data_chat_format,
                              apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """jsonargparse's parse, with its usage-and-error message turned into a :class:`ConfigError` of one or two
        lines (unless debugging); the run's own output is untouched, only the parse is captured.

        ``--print_config`` first checks the configuration as a run would (jsonargparse's printer skips the
        required-key check), so a printed config is one that runs; ``--help`` also lists the init arguments of
        Panda's training module and data module, which the generic ``--model CONFIG | CLASS_PATH`` hides.
        """
        args = list(sys.argv[1:] if args is None else args)
        if any(a.split("=")[0] == "--print_config" for a in args):
            self._parse(parser, [a for a in args if a.split("=")[0] != "--print_config"])
        try:
            self._parse(parser, args)
        except SystemExit as exit_:
            if exit_.code in (0, None) and ("-h" in args or "--help" in args) and args[0] in LIGHTNING_COMMANDS:
                print(_class_help())
            raise

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning unpickles it (for its saved hyper-parameters) and before anything
        is built: a missing or truncated checkpoint is one line naming the file, not a raw unpickling error."""
        from panda.training.checkpoint import check_checkpoint_path

        if self.config.get("subcommand"):
            check_checkpoint_path(self.config[self.config.subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def _parse(self, parser, args: list[str]) -> None:
        if debugging():
            return super().parse_arguments(parser, args)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_arguments(parser, args)
        except SystemExit as exit_:
            text = captured.getvalue()
            if exit_.code in (0, None) or "error:" not in text:
                sys.stderr.write(text)
                raise
            from panda.cli_errors import condense

            raise ConfigError(condense(text)) from None
        sys.stderr.write(captured.getvalue())


def _class_help() -> str:
    """The init arguments of PandaLM and PandaDataModule as ``--model.init_args.*`` / ``--data.init_args.*``."""
    from jsonargparse import ArgumentParser

    from panda.data import PandaDataModule
    from panda.model import PandaLM

    parts = []
    for key, cls in (("model", PandaLM), ("data", PandaDataModule)):
        class_parser = ArgumentParser(prog=f"{key}: {cls.__module__}.{cls.__qualname__}", add_help=False)
        class_parser.add_class_arguments(cls, f"{key}.init_args", fail_untyped=False, sub_configs=True)
        parts.append(class_parser.format_help())
    return "\n".join(parts)


class _ParseOnlyCLI(PandaCLI):
    def instantiate_classes(self) -> None:
        """Parsing (types, required keys, class paths) only: no model weights, data or trainer are built."""


def _cli_kwargs() -> dict:
    # auto_configure_optimizers=False: PandaLM builds its optimizer with the step-sized LR schedule; a generic
    # --optimizer/--lr_scheduler would silently replace both, so they are not offered (see panda.cli_errors)
    return {"subclass_mode_model": True, "subclass_mode_data": True, "save_config_kwargs": {"overwrite": True},
            "auto_configure_optimizers": False}


def lightning(args: list[str], run: bool = True) -> PandaCLI:
    """Run ``fit``/``validate``/``test`` with ``args`` (the subcommand first) and return the CLI object."""
    _prepare_environment()
    return PandaCLI(LightningModule, LightningDataModule, args=args, run=run, **_cli_kwargs())


def _prepare_environment() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `panda fit ...` passes its own argv as `args` (no sys.argv swapping); Lightning warns when both are set
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    _quiet_deepspeed_on_cpu()


def _quiet_deepspeed_on_cpu() -> None:
    """Without a GPU, DeepSpeed's import logs "Setting accelerator to CPU" on *stdout*, which would corrupt
    ``--print_config > run.yaml``; naming the CPU accelerator up front is what the message asks for."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def parse(args: list[str]) -> Namespace:
    """The configuration ``panda fit <args>`` would run with, checked but not instantiated.

    Args:
        args: Command-line arguments without the subcommand, e.g.
            ``["--config", "configs/base.yaml", "--config", "configs/experiments/panda_7b.yaml"]`` (parsed as
            ``fit``).
    """
    _prepare_environment()
    return _ParseOnlyCLI(LightningModule, LightningDataModule, args=args, run=False, **_cli_kwargs()).config


def _run_lightning(argv: list[str]) -> int:
    lightning(argv)
    return 0


def _usage() -> str:
    names = [*LIGHTNING_COMMANDS, *COMMANDS]
    width = max(map(len, names))
    lines = ["usage: panda <command> [options]   (panda <command> --help for each)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {DESCRIPTIONS.get(name, '')}" for name in names]
    lines += ["", "--debug (or PANDA_DEBUG=1) shows full error messages and tracebacks."]
    return "\n".join(lines)


def command(name: str):
    """The function behind a command group of :data:`COMMANDS`."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``panda`` console script; returns the exit status."""
    argv = strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING_COMMANDS:
        return report_user_errors(f"panda {name}", lambda: _run_lightning(argv))
    if name in COMMANDS:
        return report_user_errors(f"panda {name}", lambda: command(name)(rest))
    print(f"panda: error: unknown command {name!r}{did_you_mean(name, [*LIGHTNING_COMMANDS, *COMMANDS])}; "
          f"commands: {', '.join([*LIGHTNING_COMMANDS, *COMMANDS])}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
