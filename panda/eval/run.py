"""``evaluate()``: one benchmark, one model, from Python — the same Lightning ``validate`` run as the CLI.

For callers that are not a command line (the demo's evaluation step, notebooks)::

    from panda.eval import evaluate
    metrics = evaluate("runs/demo/export", "data/demo/c3_dev.json", "c3", "both", output_dir="runs/demo/eval")
    metrics["loglik/acc"], metrics["generate/acc"], metrics["run_dir"]
"""

from __future__ import annotations

import sys

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from panda.eval.datamodule import BenchmarkDataModule, Format
from panda.eval.loading import Dtype
from panda.eval.module import MultipleChoiceEvaluator
from panda.eval.scoring import Continuation, Protocol


def evaluate(model: str, benchmark_path: str, format: Format, protocol: Protocol = "both", *,
             tokenizer: str | None = None, name: str | None = None, shots: int = 0, train_path: str | None = None,
             seed: int = 0, limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 64,
             continuation: Continuation = "option", output_dir: str = "runs/eval", label: str | None = None,
             dtype: Dtype = "auto") -> dict:
    """Evaluate ``model`` on a benchmark file and return the metrics dict (also written to ``metrics.json``).

    Args:
        model: Hugging Face model directory (with tokenizer) or PandaLM checkpoint.
        benchmark_path: The benchmark file.
        format: ``logiqa_v2``, ``c3`` or ``multiple_choice``.
        protocol: ``generate``, ``loglik`` or ``both``.
        tokenizer: Tokenizer directory, if not the model's.
        name: Benchmark name (defaults to the file's stem).
        shots, train_path, seed: k-shot prompts (see :class:`~panda.eval.datamodule.BenchmarkDataModule`).
        limit: Only the first ``limit`` questions.
        batch_size: Questions per batch.
        max_new_tokens: Generation budget.
        continuation: ``option`` or ``letter`` (log-likelihood protocol).
        output_dir: Runs go to ``<output_dir>/<name>/version_N``.
        label: Model name in the outputs.
        dtype: Weights dtype (``auto``: bfloat16 on GPU, float32 on CPU).

    Returns:
        ``{"count", "generate/acc", "generate/unparseable_rate", "loglik/acc", "loglik/acc_norm", …,
        "run_dir"}`` (the keys of the protocols run).
    """
    data = BenchmarkDataModule(benchmark_path, format, name=name, shots=shots, train_path=train_path, seed=seed,
                               batch_size=batch_size, limit=limit)
    evaluator = MultipleChoiceEvaluator(model, tokenizer, protocol=protocol, max_new_tokens=max_new_tokens,
                                        continuation=continuation, label=label, dtype=dtype)
    logger = TensorBoardLogger(save_dir=output_dir, name=data.name)
    trainer = Trainer(accelerator="auto", devices=1, logger=logger, enable_progress_bar=sys.stderr.isatty(),
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(evaluator, datamodule=data, verbose=False)
    return {**evaluator.results, "run_dir": trainer.log_dir}
