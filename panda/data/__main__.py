"""Look at the training data exactly as ``fit`` will see it: ``python -m panda.data {preview,stats}``.

Both tools read the same YAML layers as training (repeated ``--config``, last wins; ``--data`` fragments; any
``--data.init_args.*`` override) through the project's LightningCLI parser (:func:`panda.cli.parse`), then build
only the data module — never the model or the trainer — so what they show is what the training run gets::

    python -m panda.data preview --config configs/base.yaml --config configs/experiments/demo.yaml --num 2
    python -m panda.data stats --config configs/base.yaml --data configs/data/coig_sft.yaml

``preview`` prints one JSON line per training sequence (a packed row, in training order): ``input_ids``,
``labels``, ``position_ids``, the source of each document and the decoded ``text`` with every span that gets no
loss wrapped in ``[[…]]``. ``stats`` prints the per-source table (records read/used/skipped, examples, tokens,
loss tokens, truncated), the realized mixture of epoch 0 against the weights, and the useful-token fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from panda.constants import IGNORE_INDEX


def parse_config(cli_args: list[str]):
    """The configuration ``lightning_main.py fit <cli_args>`` would run with (``--config`` layers, ``--data``
    fragments, ``--data.init_args.*`` overrides), parsed by the training CLI without building anything."""
    from panda.cli import parse

    argv, sys.argv = sys.argv, sys.argv[:1]  # the arguments come from `cli_args`, not this tool's command line
    try:
        return parse(cli_args)
    finally:
        sys.argv = argv


def datamodule_from_config(config):
    """Build only the data module of a parsed configuration, sized for rank 0 of the configured devices."""
    from jsonargparse import Namespace
    from lightning.pytorch import LightningDataModule
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
    """Decode ``input_ids``, wrapping every run of tokens whose label is ``IGNORE_INDEX`` in ``[[…]]``."""
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
            pieces.append(f"[[{text}]]" if labels[start] == IGNORE_INDEX else text)
            start = end
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


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m panda.data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("preview", "print training sequences as JSON lines"),
                            ("stats", "print per-source counts, the realized mixture and the useful-token fraction")):
        command = commands.add_parser(name, help=help_text,
                                      epilog="Other arguments (--config FILE, --data FILE, --data.init_args.KEY VALUE) "
                                             "go to the training CLI's parser, exactly as for `lightning_main.py fit`.")
        if name == "preview":
            command.add_argument("--num", type=int, default=4, help="rows to print (default 4)")
    args, cli_args = parser.parse_known_args(argv)
    if not any(a.split("=")[0] in ("--config", "-c", "--data") for a in cli_args):
        parser.error(f"{args.command} needs --config FILE (the YAML layers of the training run)")
    config = parse_config(cli_args)
    dm = datamodule_from_config(config)
    dm.prepare_data()
    dm.setup("fit")
    if args.command == "preview":
        preview(dm, args.num)
    else:
        stats(dm, config.trainer.accumulate_grad_batches or 1)


if __name__ == "__main__":
    main()
