"""``lightning_main.py fit`` end to end on CPU: tiny LLaMA from configs/model/tiny.yaml, TensorBoard under the run
directory, the resolved config saved beside it, and a ``fast_dev_run``."""

from __future__ import annotations

import json
from pathlib import Path

from panda.cli import lightning
from panda.model import PandaLM
from panda.weights.export import export_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _args(tokenizer_dir, tmp_path, data: list[str]) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / "base.yaml"), "--model", str(CONFIGS / "model" / "tiny.yaml"),
        "--trainer", str(CONFIGS / "trainer" / "cpu.yaml"), *data, "--data.init_args.tokenizer", str(tokenizer_dir),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path),
    ]


def test_fit_writes_tensorboard_events_and_config(tokenizer_dir, tmp_path):
    data = ["--data", "tests.model.conftest.ContractDataModule"]
    cli = lightning(_args(tokenizer_dir, tmp_path, data) + ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
                                                       "--trainer.val_check_interval", "3"])
    assert isinstance(cli.model, PandaLM) and cli.trainer.global_step == 3
    run_dir = Path(cli.trainer.log_dir)
    assert run_dir.parent == tmp_path / "runs" / "panda"
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "config.yaml").is_file()
    assert {"train/loss", "val/loss", "val/ppl"} <= set(cli.trainer.callback_metrics)


def test_fast_dev_run_on_panda_data_module(tokenizer_dir, chinese_paragraphs, tmp_path):
    """base.yaml's own data module on real text files: plain text (full loss) and instructions (prompt masked)."""
    news, instructions = tmp_path / "news.jsonl", tmp_path / "instructions.jsonl"
    news.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in chinese_paragraphs[:200]),
                    encoding="utf-8")
    instructions.write_text("".join(json.dumps({"instruction": "概括这段话", "input": t[:60], "output": t[:12]},
                                               ensure_ascii=False) + "\n" for t in chinese_paragraphs[200:300]),
                            encoding="utf-8")
    sources = f"[{{name: news, paths: {news}, format: jsonl}}, {{name: sft, paths: {instructions}, format: jsonl}}]"
    cli = lightning(_args(tokenizer_dir, tmp_path, data=[]) + ["--data.init_args.sources", sources, "--data.init_args.max_seq_length", "128",
                       "--data.init_args.batch_size", "2", "--data.init_args.val_fraction", "0.1",
                       "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.fast_dev_run", "2"])
    # what the model knows of the data arrived through link_arguments, and is kept in the checkpoint
    assert cli.trainer.global_step == 2 and cli.model.source_names == ["news", "sft"]
    assert (cli.model.hparams.tokenizer_dir, cli.model.hparams.max_seq_length) == (str(tokenizer_dir), 128)
    assert {"train/loss/news", "train/loss/sft", "val/loss"} <= set(cli.trainer.callback_metrics)

    # a model built from a config has no `pretrained` directory: export finds the tokenizer the data module used
    cli.trainer.save_checkpoint(tmp_path / "run.ckpt")
    export_checkpoint(tmp_path / "run.ckpt", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()
