"""Panda's one entry point: `python lightning_main.py {fit,validate,test} --config configs/... [--config ...]`."""

from panda.cli import main

if __name__ == "__main__":
    main()
