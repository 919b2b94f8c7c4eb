"""``python -m panda.eval table runs/eval/*``: several evaluation runs → one markdown table per metric."""

from __future__ import annotations

import argparse
import sys

from panda.eval.table import METRICS, find_runs, markdown_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panda.eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="collect runs (folders holding metrics.json) into markdown tables")
    table.add_argument("paths", nargs="+", help="run directories or folders above them")
    table.add_argument("--metric", action="append", choices=METRICS,
                       help="metric to tabulate (repeatable; default: every metric found)")
    table.add_argument("--output", help="also write the tables to this file")
    args = parser.parse_args(argv)
    text = markdown_tables(find_runs(args.paths), args.metric)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
