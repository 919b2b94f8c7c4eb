"""Panda's one entry point: `python lightning_main.py {fit,validate,test} --config configs/... [--config ...]`."""

import sys

from panda.cli import main

if __name__ == "__main__":
    sys.exit(main())
