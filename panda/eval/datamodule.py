"""A benchmark file as a Lightning data module: questions with their reference prompts, batched as plain dicts.

The prompts are built here, once, from the file and (for k-shot) a train file, so every protocol and every rank
sees the same string for a question. Batches are lists of dicts (no tensors): tokenization belongs to the
evaluator, which owns the tokenizer. ``val_dataloader`` and ``test_dataloader`` serve the same questions, so both
``lightning_main.py validate`` and ``test`` run a benchmark. Under DDP, Lightning's distributed sampler shards the
questions (padding the last ones in twice; :mod:`panda.eval.metrics` counts each once).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from typing import Literal

from panda.errors import UserError
from panda.eval.benchmarks import BenchmarkReport, read_benchmark
from panda.eval.exams import EXAM_FORMATS, prepare_exam
from panda.eval.prompts import build_prompt, choose_exemplars

Format = Literal["logiqa_v2", "c3", "multiple_choice", "ceval", "cmmlu", "agieval"]
"""The reference's formats (:mod:`panda.eval.benchmarks`) and the exam suites (:mod:`panda.eval.exams`)."""


def prepare_questions(path: str | Path, format: Format, *, shots: int = 0, train_path: str | None = None,
                      train_format: Format | None = None, seed: int = 0, limit: int | None = None,
                      strict: bool = False, report: BenchmarkReport | None = None) -> list[dict]:
    """Read a benchmark and build each question's prompt (the dicts :func:`panda.eval.scoring.score_batch` takes).

    Args: as :class:`BenchmarkDataModule`; ``report`` receives the bad records skipped (also warned about).
    """
    report = report if report is not None else BenchmarkReport(str(path))
    if format in EXAM_FORMATS:
        prepared = prepare_exam(path, format, shots=shots, train_path=train_path, report=report)
        questions = prepared
    else:
        questions = read_benchmark(path, format, strict=strict, report=report)
    if report.problems:
        rank_zero_warn(report.summary())
    if not questions:
        first = f"; first problem: {report.problems[0]}" if report.problems else ""
        raise UserError(f"{path}: no question could be read as format {format!r}{first}")
    if strict and report.skipped:
        raise UserError(f"{report.problems[0]} (strict: stopping at the first bad record)")
    if limit is not None:
        questions = questions[:limit]
    if format in EXAM_FORMATS:
        rank_zero_info(f"{path}: {len(questions)} questions in {len({q['subject'] for q in questions})} subjects, "
                       f"{shots}-shot")
        return questions
    pool = []
    if shots > 0:
        if train_path is None:
            raise ValueError(f"shots={shots} needs train_path (a file in the benchmark's format to draw exemplars)")
        pool = read_benchmark(train_path, train_format or format, strict=strict)
    prepared = [{"index": q.index, "origin": q.origin, "options": list(q.options), "label": q.label,
                 "prompt": build_prompt(q, choose_exemplars(q, pool, shots, seed))} for q in questions]
    rank_zero_info(f"{path}: {len(prepared)} questions, {shots}-shot")
    return prepared


def question_length(question: dict) -> int:
    """Characters a question puts through the model (prompt and options), the batching order's key."""
    return len(question["prompt"]) + sum(len(option) for option in question["options"])


class BenchmarkDataModule(LightningDataModule):
    """A multiple-choice benchmark for ``validate``/``test``.

    Args:
        path: The benchmark file (given on the command line: ``--data.init_args.path``).
        format: ``logiqa_v2`` (JSON lines), ``c3`` (C3-d/C3-m JSON array), ``multiple_choice`` (JSON lines), or an
            exam suite — ``ceval``, ``cmmlu``, ``agieval`` — whose ``path`` is a subject file or the split's folder
            and whose ``train_path`` is the dev folder (:mod:`panda.eval.exams`).
        name: Benchmark name in metric keys, outputs and tables; defaults to the file's stem.
        shots: Exemplars per prompt (0 = the reference's zero-shot protocol).
        train_path: File to draw k-shot exemplars from (required when ``shots > 0``).
        train_format: Its format, if different from ``format``.
        seed: Seed of the exemplar draw (per question, see :mod:`panda.eval.prompts`).
        batch_size: Questions per batch (the log-likelihood protocol scores all their options in one pass).
        limit: Evaluate only the first ``limit`` questions.
        strict: Stop at the first bad record instead of skipping it (skipped ones are always reported).
        num_workers: DataLoader workers (prompts are prebuilt, so 0 is usually right).
        sort_by_length: Batch questions longest first (by prompt + options characters), so a batch pads little and
            an out-of-memory error shows at once; outputs are keyed and sorted by question index either way.
    """

    def __init__(self, path: str | None = None, format: Format = "multiple_choice", name: str | None = None,
                 shots: int = 0, train_path: str | None = None, train_format: Format | None = None,
                 seed: int = 0, batch_size: int = 8, limit: int | None = None, strict: bool = False,
                 num_workers: int = 0, sort_by_length: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = path
        self.format = format
        self.name = name or (Path(path).stem if path else format)
        self.shots, self.train_path, self.train_format, self.seed = shots, train_path, train_format, seed
        self.batch_size, self.limit, self.strict, self.num_workers = batch_size, limit, strict, num_workers
        self.sort_by_length = sort_by_length
        self.questions: list[dict] | None = None
        self.report: BenchmarkReport | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.questions is not None:
            return
        if self.path is None:
            raise ValueError("no benchmark file: pass --data.init_args.path <file>")
        self.report = BenchmarkReport(str(self.path))
        self.questions = prepare_questions(self.path, self.format, shots=self.shots, train_path=self.train_path,
                                           train_format=self.train_format, seed=self.seed, limit=self.limit,
                                           strict=self.strict, report=self.report)
        if self.sort_by_length:
            self.questions.sort(key=question_length, reverse=True)

    def _loader(self) -> DataLoader:
        return DataLoader(self.questions, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=list)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
