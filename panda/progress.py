"""Progress bars for long jobs: on global rank 0 only, and only when stderr is a terminal (logs stay clean)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def is_global_zero() -> bool:
    """Rank 0 of a torchrun/SLURM/Lightning launch, or a plain process."""
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return os.environ[variable] == "0"
    return True


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True, **kwargs):
    """A ``tqdm`` bar (``tqdm.auto``) that is silent off rank 0, when not a terminal, or when not ``enabled``."""
    from tqdm.auto import tqdm

    show = enabled and is_global_zero() and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=not show, **kwargs)
