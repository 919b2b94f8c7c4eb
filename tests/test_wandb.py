"""``configs/trainer/wandb.yaml``: a tiny fit logs to Weights & Biases in offline mode (a run directory with the
logged scalars appears under ``runs/wandb``) and to TensorBoard beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from panda.cli import lightning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# an item of W&B's history record: field 2 (key) then field 16 (value_json), each length-prefixed (< 128 bytes)
ITEM = re.compile(rb"\x12([\x01-\x7f])", re.S)


def logged_items(run_file: Path) -> dict[str, list[float]]:
    """Every ``key: value`` history item in a ``run-*.wandb`` record log, in order (wandb ≥ 0.2x ships no Python
    reader of its own format; the items are plain protobuf fields)."""
    data, items = run_file.read_bytes(), {}
    for match in ITEM.finditer(data):
        start = match.end()
        key = data[start:start + match[1][0]]
        rest = data[start + len(key):]
        if rest[:2] != b"\x82\x01" or not re.fullmatch(rb"[\w/.]+", key):
            continue
        value = rest[3:3 + rest[2]]
        try:
            items.setdefault(key.decode(), []).append(float(json.loads(value)))
        except (ValueError, TypeError):
            continue
    return items


def test_wandb_fragment_logs_scalars_offline_beside_tensorboard(tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)  # the fragment writes under ./runs
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = lightning([
        "fit", "--config", str(CONFIGS / "base.yaml"), "--model", str(CONFIGS / "model" / "tiny.yaml"),
        "--trainer", str(CONFIGS / "trainer" / "cpu.yaml"), "--trainer", str(CONFIGS / "trainer" / "wandb.yaml"),
        "--data", "tests.model.conftest.ContractDataModule", "--data.init_args.tokenizer", str(tokenizer_dir),
        "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == 3
    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["TensorBoardLogger", "WandbLogger"]
    import wandb

    wandb.finish()
    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    (run_file,) = run.glob("run-*.wandb")  # the record log `wandb sync` uploads
    items = logged_items(run_file)
    assert {"train/loss", "val/loss", "val/ppl"} <= set(items)
    assert len(items["train/loss"]) >= 3  # one per step
    assert items["train/loss"][-1] == pytest.approx(float(cli.trainer.callback_metrics["train/loss"]), rel=1e-6)
    assert items["val/loss"][-1] == pytest.approx(float(cli.trainer.callback_metrics["val/loss"]), rel=1e-6)
    assert list((tmp_path / "runs" / "panda").glob("version_0/events.out.tfevents.*"))
