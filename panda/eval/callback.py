"""Periodic evaluation during ``fit``: every N optimizer steps, score a benchmark with the model being trained.

It uses exactly the code of ``lightning_main.py validate`` (:func:`panda.eval.scoring.score_batch`, the same
prompts, metrics and output files), applied to the Hugging Face model the training module holds at ``.model``
(:class:`panda.model.PandaLM`). Each rank scores a disjoint share of the questions (``questions[rank::world]``, no
padding), the metrics are synchronised, and rank 0 logs ``eval/<benchmark>/<metric>`` at the current step and
writes ``predictions.jsonl`` + ``metrics.json`` under ``<log_dir>/eval/<benchmark>/step_<N>``. Its loop runs
outside Lightning's, so it shows its own progress bar (rank 0, terminals only).

Add it in YAML::

    trainer:
      callbacks:
        - class_path: panda.eval.callback.PeriodicEvaluation
          init_args: {path: data/c3-d-dev.json, format: c3, tokenizer: <tokenizer dir>, every_n_steps: 250,
                      protocol: loglik, limit: 200}

Not for DeepSpeed ZeRO-3 (partitioned weights need every rank to take part in every forward of ``generate``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback

from panda.eval.datamodule import Format, prepare_questions, question_length
from panda.eval.outputs import gather_records, write_outputs
from panda.eval.scoring import (Continuation, Protocol, compute_metrics, make_metrics, score_batch, subject_metrics,
                                update_metrics)


def progress(total: int, description: str, rank_zero: bool):
    """A tqdm bar over questions: on rank 0 only, and only when stderr is a terminal (quiet in logs and CI)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="q", dynamic_ncols=True, leave=False,
                disable=not (rank_zero and sys.stderr.isatty()))


class PeriodicEvaluation(Callback):
    """Evaluate the training model on a benchmark every ``every_n_steps`` optimizer steps.

    Args:
        path: Benchmark file.
        format: Its format (``logiqa_v2``, ``c3``, ``multiple_choice``).
        tokenizer: Tokenizer directory (the training data's tokenizer).
        every_n_steps: Evaluate when ``trainer.global_step`` is a positive multiple of this.
        name: Benchmark name in metric keys; defaults to the file's stem.
        protocol: ``loglik`` (fast, the default here), ``generate`` or ``both``.
        shots: Exemplars per prompt; ``train_path`` gives them.
        train_path: File to draw exemplars from.
        seed: Exemplar seed.
        limit: Evaluate only the first ``limit`` questions (keeps periodic evaluation cheap).
        batch_size: Questions per forward.
        max_new_tokens: Generation budget of the generative protocol.
        continuation: ``option`` texts or ``letter`` s for the log-likelihood protocol.
        model_attribute: Attribute of the LightningModule holding the Hugging Face model.
    """

    def __init__(self, path: str, format: Format, tokenizer: str, every_n_steps: int = 250,
                 name: str | None = None, protocol: Protocol = "loglik", shots: int = 0, train_path: str | None = None,
                 seed: int = 0, limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 64,
                 continuation: Continuation = "option", model_attribute: str = "model") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be ≥ 1, got {every_n_steps}")
        self.path, self.format, self.tokenizer_path = path, format, tokenizer
        self.every_n_steps, self.name = every_n_steps, name or Path(path).stem
        self.protocol, self.shots, self.train_path, self.seed = protocol, shots, train_path, seed
        self.limit, self.batch_size, self.max_new_tokens = limit, batch_size, max_new_tokens
        self.continuation, self.model_attribute = continuation, model_attribute
        self.questions: list[dict] | None = None
        self.tokenizer = None
        self.last_step = -1
        self.history: list[dict] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        from panda.data.tokenizer import load_tokenizer

        if self.questions is None:
            self.questions = prepare_questions(self.path, self.format, shots=self.shots, train_path=self.train_path,
                                               seed=self.seed, limit=self.limit)
            self.questions.sort(key=question_length, reverse=True)  # as BenchmarkDataModule batches them
            self.tokenizer = load_tokenizer(self.tokenizer_path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.last_step = step
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict:
        """Score the benchmark now; returns the metrics (on every rank)."""
        model = getattr(pl_module, self.model_attribute)
        was_training = model.training
        model.eval()
        share = self.questions[trainer.global_rank::trainer.world_size]
        metrics = {name: metric.to(pl_module.device) for name, metric in make_metrics(self.protocol).items()}
        records = []
        with progress(len(share), f"eval {self.name}", trainer.is_global_zero) as bar:
            for start in range(0, len(share), self.batch_size):
                batch = score_batch(model, self.tokenizer, share[start:start + self.batch_size],
                                    protocol=self.protocol, max_new_tokens=self.max_new_tokens,
                                    continuation=self.continuation)
                update_metrics(metrics, batch)
                records.extend(batch)
                bar.update(len(batch))
        model.train(was_training)
        results = compute_metrics(metrics)
        records = gather_records(records)
        results.update(subject_metrics(records, self.protocol))
        step = trainer.global_step
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) / "eval" / self.name / f"step_{step}"  # collective
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{self.name}/{k}": float(v) for k, v in results.items()
                                    if isinstance(v, (int, float))}, step=step)
            write_outputs(run_dir, records, {"benchmark": self.name, "step": step, "protocol": self.protocol,
                                             "shots": self.shots, **results})
        self.history.append({"step": step, **results})
        return results
