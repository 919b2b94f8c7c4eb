"""``panda data preview|stats|prepare`` (also ``python -m panda.data …``): the training data exactly as ``fit`` sees it.

Each tool reads the same YAML layers as training (repeated ``--config``, last wins; ``--data`` fragments; any
``--data.init_args.*`` override) with the training CLI's own parser (jsonargparse, as LightningCLI) plus its own
options, then builds only the data module — never the model or the trainer::

    panda data prepare --config configs/base.yaml --config configs/experiments/panda_7b.yaml
    torchrun --nnodes 2 --nproc-per-node 8 -m panda.data prepare --config ...   # every rank builds a share
    panda data preview --config configs/base.yaml --config configs/experiments/demo.yaml --num 2
    panda data stats --config configs/base.yaml --data configs/data/coig_sft.yaml

``prepare`` builds every source's cache ahead of a launch (``num_proc`` processes per rank; under torchrun each rank
builds a disjoint share) and prints the per-source table. ``preview`` prints one JSON line per training row (a
packed row, in training order): ``input_ids``, ``labels``, ``position_ids``, the source of each document and the
decoded ``text`` with every span that gets no loss wrapped in ``[[…]]``. ``stats`` prints the per-source table, the
realized mixture of epoch 0 against the weights, and the useful-token fraction.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from lightning.pytorch import LightningDataModule, LightningModule

from panda.cli import PandaCLI, _cli_kwargs
from panda.constants import IGNORE_INDEX
from panda.errors import ConfigError, did_you_mean, report_user_errors

TOOLS = {
    "prepare": ("build every source's cache ahead of a launch (every rank of a torchrun job builds a share)", {}),
    "preview": ("print training rows as JSON lines", {"num": (int, 4, "rows to print")}),
    "stats": ("print per-source counts, the realized mixture and the useful-token fraction", {}),
}
"""name → (what it does, its own options: name → (type, default, help))."""


class _DataToolCLI(PandaCLI):
    """The training CLI's parser with one tool's options added; parses only (nothing is instantiated)."""

    tool_options: dict = {}

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        for name, (kind, default, text) in self.tool_options.items():
            parser.add_argument(f"--{name}", type=kind, default=default, help=f"{text} (default {default})")

    def instantiate_classes(self) -> None:
        """Parsing only: the tools build the data module themselves."""


def parse_config(cli_args: list[str], tool: str = "stats"):
    """The configuration ``panda fit <cli_args>`` would run with, plus ``tool``'s options, parsed and checked."""
    cli = type(f"{tool.title()}CLI", (_DataToolCLI,), {"tool_options": TOOLS[tool][1]})
    with warnings.catch_warnings():  # the arguments are given as `args` on purpose (this is not `fit`'s argv)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli(LightningModule, LightningDataModule, args=cli_args, run=False, **_cli_kwargs()).config


def datamodule_from_config(config):
    """Build only the data module of a parsed configuration, sized for rank 0 of the configured devices."""
    from jsonargparse import Namespace
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    dm = instantiate(Namespace(data=config.data)).data
    dm.world_size = _world_size(config.trainer)
    return dm


def load_datamodule(cli_args: list[str]):
    """:func:`datamodule_from_config` of :func:`parse_config`."""
    return datamodule_from_config(parse_config(cli_args))


def _world_size(trainer) -> int:
    """Processes of the configured run: ``num_nodes`` times ``devices`` (1 when devices are "auto")."""
    devices = trainer.devices
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        count = max(int(devices), 1)
    else:
        count = 1
    return count * (trainer.num_nodes or 1)


def marked_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Decode ``input_ids``, wrapping every run of tokens whose label is ``IGNORE_INDEX`` in ``[[…]]``.

    Each run's text is what it adds to the decoded text before it (not the run decoded alone, which would drop the
    leading space SentencePiece strips at the start of a text: a FLAN target ``" 2"`` must show as ``" 2"``).
    """
    pieces, start, shown = [], 0, ""
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[:end], skip_special_tokens=False)
            piece = text[len(shown):] if text.startswith(shown) else \
                tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
            pieces.append(f"[[{piece}]]" if labels[start] == IGNORE_INDEX else piece)
            start, shown = end, text
    return "".join(pieces)


def preview(dm, num: int, out=None) -> None:
    """Print the first ``num`` training rows of epoch 0 (rank 0) as JSON lines."""
    out = out or sys.stdout
    shown = 0
    for batch in dm.train_dataloader():
        for b in range(batch["input_ids"].shape[0]):
            real = int(batch["attention_mask"][b].sum())
            ids = batch["input_ids"][b, :real].tolist()
            labels = batch["labels"][b, :real].tolist()
            positions = batch["position_ids"][b, :real].tolist()
            sources = [dm.source_names[int(batch["source_ids"][b, t])] for t in range(real) if positions[t] == 0]
            record = {"row": shown, "sources": sources, "input_ids": ids, "labels": labels,
                      "position_ids": positions, "text": marked_text(dm.tokenizer, ids, labels)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            shown += 1
            if shown >= num:
                return


def stats(dm, accumulate: int = 1, out=None) -> None:
    """Print the source table, the realized mixture of epoch 0, batches and steps, and the useful-token fraction."""
    out = out or sys.stdout
    out.write(dm.summary() + "\n\n")
    epoch = dm.epoch_stats(0)
    header = ("source", "weight", "rows", "seqs", "tokens", "target %", "realized %", "token %")
    table = [header]
    for name, s in epoch["sources"].items():
        table.append((name, f"{s['weight']:g}", s["rows"], s["sequences"], s["tokens"],
                      f"{100 * s['target_share']:.2f}", f"{100 * s['realized_share']:.2f}",
                      f"{100 * s['token_share']:.2f}"))
    widths = [max(len(str(row[k])) for row in table) for k in range(len(header))]
    out.write("epoch 0 mixture (shares of sequences; target = weight x sequences):\n")
    for row in table:
        out.write("  ".join(str(v).ljust(w) if k == 0 else str(v).rjust(w)
                            for k, (v, w) in enumerate(zip(row, widths))) + "\n")
    out.write(f"\nbatches per epoch per device: {epoch['batches']} (batch_size {dm.batch_size}, "
              f"world_size {dm.world_size}); optimizer steps per epoch: "
              f"{-(-epoch['batches'] // accumulate)} (accumulate_grad_batches {accumulate})\n")
    out.write(f"useful-token fraction: {epoch['useful_fraction']:.4f} (real tokens / padded positions, "
              f"max_seq_length {dm.max_seq_length}, packing {dm.packing}, pad_to {dm.pad_to})\n")
    out.write(f"loss-token fraction: {epoch['loss_fraction']:.4f} (tokens that get loss / real tokens)\n")


def prepare(dm, out=None) -> None:
    """Build every cache (every rank of a ``torchrun`` job takes a share), then print the source table on rank 0."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # only the build's object collectives and barriers: CPU is enough
    dm.world_size = dist.get_world_size() if dist.is_initialized() else 1
    dm.setup("fit")
    if not dist.is_initialized() or dist.get_rank() == 0:
        (out or sys.stdout).write(dm.summary() + "\n")


def _usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: panda data {" + ",".join(TOOLS) + "} --config FILE [--config FILE ...] [options]", "",
             __doc__.split("\n\n")[0], ""]
    lines += [f"  {name.ljust(width)}  {what}" for name, (what, _) in TOOLS.items()]
    lines += ["", "Other options (--config, --data FILE, --data.init_args.KEY VALUE, --trainer.*) are the training "
              "CLI's, exactly as for `panda fit`; `panda data TOOL --help` lists them."]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        raise ConfigError(f"unknown data tool {tool!r}{did_you_mean(tool, TOOLS)}; choose one of {', '.join(TOOLS)}")
    if not any(a in ("-h", "--help") or a.split("=")[0] in ("--config", "-c", "--data") for a in rest):
        raise ConfigError(f"panda data {tool} needs --config FILE (the YAML layers of the training run)")
    config = parse_config(rest, tool)
    dm = datamodule_from_config(config)
    if tool == "prepare":
        prepare(dm)
        return 0
    dm.setup("fit")
    if tool == "preview":
        preview(dm, config.num)
    else:
        stats(dm, config.trainer.accumulate_grad_batches or 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one data tool; a user error is one line on stderr (exit status 1, or 2 for a command-line mistake)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    return report_user_errors("panda data", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
