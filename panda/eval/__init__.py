"""Evaluation on multiple-choice benchmarks (LogiQA-v2, C3-d, C3-m, any multiple-choice JSON lines).

Pipeline: benchmark file → :mod:`~panda.eval.benchmarks` (questions) → :mod:`~panda.eval.prompts` (the
reference's prompt, byte for byte) → :mod:`~panda.eval.generation` (greedy, first ``A|B|C|D``) and/or
:mod:`~panda.eval.loglik` (option log-likelihoods) → :mod:`~panda.eval.metrics` (each question once, any number of
ranks) → :mod:`~panda.eval.outputs` (per-question JSON lines, metrics JSON) → :mod:`~panda.eval.table`.
Entry points: ``lightning_main.py validate --config configs/eval/<benchmark>.yaml`` (:mod:`~panda.eval.module`,
:mod:`~panda.eval.datamodule`), :func:`evaluate` from Python, :class:`PeriodicEvaluation` during ``fit``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"BenchmarkDataModule": "datamodule", "MultipleChoiceEvaluator": "module",
            "PeriodicEvaluation": "callback", "evaluate": "run"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import Lightning-based parts on first use, so ``panda.eval.metrics`` & co. stay light in worker processes."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"panda.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'panda.eval' has no attribute {name!r}")
