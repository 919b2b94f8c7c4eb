"""``panda eval table runs/eval/*`` (or ``python -m panda.eval table …``): evaluation runs → markdown tables.

One table per metric, models as rows and benchmarks as columns; ``--subjects`` adds, for each exam suite (C-Eval,
CMMLU, AGIEval-zh), a table of its subjects. Evaluations themselves run with
``panda validate --config configs/eval/<benchmark>.yaml`` (see the README).
"""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser

from panda.eval.table import METRICS, find_runs, markdown_tables


def parser() -> ArgumentParser:
    root = ArgumentParser(prog="panda eval", description=__doc__.split("\n\n")[0])
    commands = root.add_subcommands(dest="command")
    table = ArgumentParser(description="Collect runs (folders holding metrics.json) into markdown tables.")
    table.add_argument("paths", nargs="+", help="run directories or folders above them")
    table.add_argument("--metric", action="append", default=None,
                       help=f"metric to tabulate (repeatable; default: every metric found): {', '.join(METRICS)}")
    table.add_argument("--subjects", action="store_true", help="also tabulate each exam suite's subjects")
    table.add_argument("--output", type=str | None, default=None, help="also write the tables to this file")
    commands.add_subcommand("table", table, help="evaluation runs as markdown tables")
    return root


def main(argv: list[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    options = args.table
    unknown = [metric for metric in options.metric or [] if metric not in METRICS]
    if unknown:
        root.error(f"--metric {unknown[0]!r} is not one of {', '.join(METRICS)}")
    text = markdown_tables(find_runs(options.paths), options.metric, subjects=options.subjects)
    sys.stdout.write(text)
    if options.output:
        with open(options.output, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
