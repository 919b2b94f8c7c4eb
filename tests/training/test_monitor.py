"""Throughput counts useful (non-pad) tokens and documents; model FLOPs per token agree with a FLOP counter."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from panda.model import PandaLM
from panda.training.monitor import PandaThroughputMonitor, documents, training_flops_per_token, useful_tokens
from tests.model.conftest import contract_batch, contract_datamodule, tiny_config  # noqa: F401 (fixtures)


def test_counts_real_tokens_and_documents_only():
    batch = contract_batch([[([1, 5, 6], [-100, 5, 6], 0), ([1, 7], [-100, 7], 1)], [([1, 8, 9, 10], [-100] * 4, 0)]],
                           width=6, pad_id=3)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert useful_tokens(batch) == 9  # 5 + 4; the pad tails (1 and 2 tokens) do not count
    assert documents(batch) == 3


def test_flops_per_token_matches_torch_flop_counter(tiny_config):
    # eager attention: the FLOP counter sees its matmuls (it has no formula for the CPU SDPA kernel)
    model = PandaLM(config=tiny_config, attn_implementation="eager").hf_model
    rows, context = 2, 32
    input_ids = torch.randint(0, tiny_config["vocab_size"], (rows, context))
    measured = measure_flops(model, lambda: model(input_ids=input_ids).logits, loss_fn=lambda y: y.float().sum())
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    formula = training_flops_per_token(params, params, tiny_config["num_hidden_layers"], tiny_config["hidden_size"],
                                       context) * rows * context
    assert abs(formula - measured) / measured < 0.02, (formula, measured)
    frozen = training_flops_per_token(params, 0, 2, 64, context)
    assert frozen == training_flops_per_token(params, params, 2, 64, context) - 2 * params


def test_throughput_and_mfu_are_logged_in_useful_tokens(tiny_config, contract_datamodule, tmp_path):
    model = PandaLM(config=tiny_config, max_seq_length=contract_datamodule.max_seq_length)
    monitor = PandaThroughputMonitor(window_size=2, peak_flops=1e12)
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=CSVLogger(tmp_path), log_every_n_steps=1,
                      callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                      limit_val_batches=0)
    trainer.fit(model, contract_datamodule)
    assert [c for c in trainer.callbacks if isinstance(c, PandaThroughputMonitor)] == [monitor]  # ours, not a 2nd
    context = contract_datamodule.max_seq_length  # attention is sized by the row length
    assert model.flops_per_token == training_flops_per_token(
        sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n),
        sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n), 2, 64, context)
    last = next(b for i, b in enumerate(contract_datamodule.train_dataloader()) if i == 3)
    assert model.flops_per_batch == model.flops_per_token * useful_tokens(last)
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ["train/device/items_per_sec", "train/device/samples_per_sec", "train/device/mfu"]:
        assert key in header, header
