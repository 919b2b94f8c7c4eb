"""The evaluator that ``lightning_main.py validate --config configs/eval/<benchmark>.yaml`` runs.

It wraps a model under evaluation — any Hugging Face ``save_pretrained`` directory with its tokenizer, or a Panda
training checkpoint (see :mod:`panda.eval.loading`) — and scores the benchmark of a
:class:`~panda.eval.datamodule.BenchmarkDataModule` with the reference's generative protocol, the
log-likelihood protocol, or both (:mod:`panda.eval.scoring`). The model is loaded in ``configure_model``, not in
``__init__``, so that parsing a config (and ``--print_config``) never touches weights; Lightning then moves it to
the device. At the end of the epoch the per-question records of all ranks are merged and written, with the
metrics, into the trainer's ``log_dir`` (:mod:`panda.eval.outputs`), and the metrics are logged as
``eval/<benchmark>/<metric>`` (TensorBoard scalars, and the table Lightning prints).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from panda.eval.loading import Dtype, load_model_and_tokenizer
from panda.eval.outputs import gather_records, write_outputs
from panda.eval.scoring import (Continuation, Protocol, compute_metrics, make_metrics, score_batch, subject_metrics,
                                update_metrics)


class MultipleChoiceEvaluator(LightningModule):
    """Scores a multiple-choice benchmark with a causal LM.

    Args:
        model: Hugging Face model directory, or a PandaLM ``.ckpt`` file / DeepSpeed checkpoint directory
            (``--model.init_args.model``).
        tokenizer: Tokenizer directory; defaults to the model directory (required for checkpoints whose training
            run did not start from a directory holding a tokenizer).
        protocol: ``generate`` (the reference: greedy decoding, first ``A|B|C|D``), ``loglik`` (option
            log-likelihoods, ``acc`` and ``acc_norm``), or ``both``.
        max_new_tokens: Generation budget of the generative protocol (the reference used 64).
        max_prompt_tokens: Generation prompts keep only their first this many tokens, as the reference's
            ``truncation=True, max_length=2048`` did (a warning names how many were cut); None keeps them whole.
        continuation: What the log-likelihood protocol scores after the prompt: the ``option`` texts
            (lm-evaluation-harness style; ``acc_norm`` matters) or the ``letter`` s (then ``acc_norm == acc``).
        share_prompt: Score all options of a question in one row after a single copy of the prompt (tree attention
            mask, see :mod:`panda.eval.loglik`); off: one `prompt + option` row per option.
        dtype: Weights dtype; ``auto`` = bfloat16 on GPU, float32 on CPU.
        trust_remote_code: Allow a model directory's own Python code (off: only transformers' classes load).
        label: Model name in outputs and tables; defaults to the model path's last component(s).
    """

    def __init__(self, model: str | None = None, tokenizer: str | None = None, protocol: Protocol = "both",
                 max_new_tokens: int = 64, max_prompt_tokens: int | None = 2048, continuation: Continuation = "option",
                 share_prompt: bool = True, dtype: Dtype = "auto", trust_remote_code: bool = False,
                 label: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_path, self.tokenizer_path = model, tokenizer
        self.protocol, self.max_new_tokens, self.continuation = protocol, max_new_tokens, continuation
        self.max_prompt_tokens = max_prompt_tokens
        self.share_prompt, self.dtype_name, self.trust_remote_code = share_prompt, dtype, trust_remote_code
        self.label = label or (model_label(model) if model else None)
        self.model = None
        self.tokenizer = None
        self.metrics = torch.nn.ModuleDict()
        self.records: list[dict] = []
        self.results: dict | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.model_path is None:
            raise ValueError("no model to evaluate: pass --model.init_args.model <HF directory or checkpoint>")
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_path, self.tokenizer_path,
                                                              dtype=self.dtype_name,
                                                              trust_remote_code=self.trust_remote_code)
        self.model.requires_grad_(False)

    def _benchmark(self) -> str:
        datamodule = getattr(self.trainer, "datamodule", None)
        return getattr(datamodule, "name", None) or "benchmark"

    def _start(self) -> None:
        self.model.eval()
        self.metrics = torch.nn.ModuleDict({name.replace("/", "__"): metric
                                            for name, metric in make_metrics(self.protocol).items()}).to(self.device)
        self.records = []

    def _named_metrics(self) -> dict:
        """``self.metrics`` under the reported names (``ModuleDict`` keys cannot hold ``/``)."""
        return {name.replace("__", "/"): metric for name, metric in self.metrics.items()}

    def _step(self, batch: list[dict]) -> None:
        records = score_batch(self.model, self.tokenizer, batch, protocol=self.protocol,
                              max_new_tokens=self.max_new_tokens, continuation=self.continuation,
                              share_prompt=self.share_prompt, max_prompt_tokens=self.max_prompt_tokens)
        update_metrics(self._named_metrics(), records)
        self.records.extend(records)

    def _finish(self) -> None:
        metrics = compute_metrics(self._named_metrics())
        records = gather_records(self.records)
        by_subject = subject_metrics(records, self.protocol)  # the same on every rank: records are gathered
        benchmark = self._benchmark()
        logged = {**metrics, **{k: v for k, v in by_subject.items() if k != "subjects"}}
        self.log_dict({f"eval/{benchmark}/{k}": float(v) for k, v in logged.items()}, sync_dist=True)
        datamodule = getattr(self.trainer, "datamodule", None)
        self.results = {
            "benchmark": benchmark, "model": self.label, "model_path": self.model_path,
            "data_path": getattr(datamodule, "path", None), "shots": getattr(datamodule, "shots", None),
            **report_counts(getattr(datamodule, "report", None)),
            "protocol": self.protocol, "max_new_tokens": self.max_new_tokens, "continuation": self.continuation,
            **metrics, **by_subject,
        }
        run_dir = self.trainer.log_dir or self.trainer.default_root_dir  # a collective call: every rank asks
        if self.trainer.is_global_zero:
            path = write_outputs(run_dir, records, self.results)
            rank_zero_info(f"{benchmark}: {metrics} → {path}")
        self.records = []

    def on_validation_epoch_start(self) -> None:
        self._start()

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish()

    def on_test_epoch_start(self) -> None:
        self._start()

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._step(batch)

    def on_test_epoch_end(self) -> None:
        self._finish()


def report_counts(report) -> dict:
    """``skipped_records`` (unreadable, not scored) and ``unanswerable`` (kept, scored wrong) of a read."""
    if report is None:
        return {"skipped_records": 0, "unanswerable": 0}
    return {"skipped_records": report.skipped, "unanswerable": len(report.problems) - report.skipped}


def model_label(path: str) -> str:
    """A short model name for tables: the directory name, or ``run/checkpoint`` for checkpoint files."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.suffix == ".ckpt" else path.name
