"""Kill-and-resume equality through the real entry point, on real 2-process DeepSpeed ZeRO-1 (CPU, gloo, bf16).

Three runs of ``python lightning_main.py fit`` with the same config (tiny LLaMA, People's Daily text, packed):
an uninterrupted one; one SIGKILLed mid-epoch in the middle of writing its step-8 checkpoint (both ranks, after
the first file of the checkpoint is on disk); and one resumed with ``--ckpt_path last``, which must pick the
complete step-4 checkpoint and discard the half-written one. The resumed run must log exactly the losses of the
uninterrupted one from step 5 on, cross the epoch boundary the same way, and end with bit-identical weights (bf16
model and fp32 ZeRO masters).
A single-process check makes sure resuming builds no batch before the resume point (no replay).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS, EVERY = 12, 4
KILL_AT = 2 * EVERY


class KillDuringSave(L.Callback):
    """Test helper: at ``step``, let rank 0 write the first file of the checkpoint, then SIGKILL every rank.

    Lightning runs checkpoint callbacks after the others, so the save of that step follows this hook.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or not trainer.is_global_zero:
            return
        save = torch.save

        def save_then_die(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)) and ".partial" in str(f):  # a checkpoint file, not a buffer
                os.killpg(os.getpgid(0), signal.SIGKILL)

        torch.save = save_then_die


def model_config(vocab_size: int) -> dict:
    return {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}


def write_config(path: Path, run_dir: Path, tokenizer_dir: Path, corpus: Path, vocab_size: int,
                 extra_callbacks: list[dict] = (), accumulation: int = 1) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "panda.model.PandaLM", "init_args": {
            "config": model_config(vocab_size),
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
            "monitor_throughput": False}},
        "data": {"class_path": "panda.data.PandaDataModule", "init_args": {
            "tokenizer": str(tokenizer_dir), "sources": [{"name": "news", "paths": str(corpus), "format": "jsonl"}],
            "max_seq_length": 64, "batch_size": 2, "cache_dir": str(path.parent / "cache")}},
        "trainer": {
            "accelerator": "cpu", "devices": 2, "precision": "bf16-mixed",
            "strategy": str(ROOT / "configs" / "strategy" / "deepspeed_cpu.yaml"),
            "max_steps": MAX_STEPS, "accumulate_grad_batches": accumulation, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run_dir), "name": "logs", "flush_logs_every_n_steps": 1}},
            "callbacks": [{"class_path": "panda.training.checkpoint.AtomicCheckpoint",
                           "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": EVERY,
                                         "keep_last": 2}}, *extra_callbacks],
        },
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def fit_command(config: Path, *extra: str) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    return [sys.executable, "lightning_main.py", "fit", "--config", str(config), *extra], env


def fit(config: Path, *extra: str) -> None:
    command, env = fit_command(config, *extra)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def logged_losses(run_dir: Path, version: int = 0) -> dict[int, tuple[int, str]]:
    """``{step: (epoch, loss as logged)}`` of rank 0, from one CSVLogger version of ``run_dir``."""
    losses = {}
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("train/loss"):
                losses[int(row["step"])] = (int(row["epoch"]), row["train/loss"])
    return losses


def final_weights(checkpoint: Path) -> tuple[dict, dict]:
    """The bf16 module weights and the fp32 weights merged from the ZeRO optimizer shards of a checkpoint."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    module = torch.load(checkpoint / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    merged = convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint), str(checkpoint.parent / "merged.pt"))
    return module, merged["state_dict"]


@pytest.fixture()
def corpus(tmp_path, chinese_paragraphs) -> Path:
    path = tmp_path / "news.jsonl"
    lines = [json.dumps({"text": text}, ensure_ascii=False) for text in chinese_paragraphs[:30]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sigkill_during_a_save_then_resume_matches_uninterrupted_run(tmp_path, tokenizer_dir, tokenizer, corpus):
    kill_during_a_save_then_resume(tmp_path, tokenizer_dir, tokenizer, corpus, accumulation=1)


@pytest.mark.slow
def test_sigkill_during_a_save_then_resume_with_gradient_accumulation(tmp_path, tokenizer_dir, tokenizer, corpus):
    """The same kill and resume with 2 micro-batches per optimizer step (the data position then counts micro-batches,
    not steps). As long as the test above (≈60 s), so it runs with `make test-slow`, not in CI."""
    kill_during_a_save_then_resume(tmp_path, tokenizer_dir, tokenizer, corpus, accumulation=2)


def kill_during_a_save_then_resume(tmp_path, tokenizer_dir, tokenizer, corpus, accumulation: int) -> None:
    vocab = len(tokenizer)
    full_dir, cut_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    fit(write_config(tmp_path / "full.yaml", full_dir, tokenizer_dir, corpus, vocab, accumulation=accumulation))
    reference = logged_losses(full_dir)
    assert sorted(reference) == list(range(MAX_STEPS))
    assert reference[EVERY - 1][0] == reference[EVERY][0], "the resume point must be mid-epoch"
    assert reference[KILL_AT - 1][0] == reference[KILL_AT][0], "the kill must come mid-epoch"
    assert reference[MAX_STEPS - 1][0] > reference[EVERY][0], "the runs must cross an epoch boundary after the resume"

    kill = {"class_path": f"{__name__}.KillDuringSave", "init_args": {"step": KILL_AT}}
    command, env = fit_command(write_config(tmp_path / "cut.yaml", cut_dir, tokenizer_dir, corpus, vocab, [kill],
                                            accumulation))
    killed_run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                                start_new_session=True)  # its own process group: the helper kills both ranks
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-4000:]
    checkpoints = cut_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f".step={KILL_AT:08d}.ckpt.partial",
                                                              f"step={EVERY:08d}.ckpt"]
    assert any(p.is_file() for p in (checkpoints / f".step={KILL_AT:08d}.ckpt.partial").rglob("*"))

    fit(write_config(tmp_path / "resume.yaml", cut_dir, tokenizer_dir, corpus, vocab, accumulation=accumulation),
        "--ckpt_path", "last")

    killed, resumed = logged_losses(cut_dir, version=0), logged_losses(cut_dir, version=1)
    assert set(range(EVERY + 1)) <= set(killed)  # logged past the checkpoint before the kill (the CSV lags a step)
    assert killed == {s: reference[s] for s in killed}
    assert resumed == {s: reference[s] for s in range(EVERY, MAX_STEPS)}
    # keep_last=2, plus the checkpoint this run resumed from, which Lightning never deletes
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"step={s:08d}.ckpt" for s in (EVERY, KILL_AT, MAX_STEPS)]

    name = f"step={MAX_STEPS:08d}.ckpt"
    (full_module, full_fp32), (cut_module, cut_fp32) = (final_weights(d / "checkpoints" / name)
                                                        for d in (full_dir, cut_dir))
    assert full_module.keys() == cut_module.keys() and full_fp32.keys() == cut_fp32.keys()
    assert all(torch.equal(full_module[k], cut_module[k]) for k in full_module)
    assert all(torch.equal(full_fp32[k], cut_fp32[k]) for k in full_fp32)


def test_resume_builds_no_batch_before_the_resume_point(tmp_path, tokenizer_dir, tokenizer, corpus, monkeypatch):
    """Resume cost does not grow with the step reached: the loader starts at the saved position, no replay."""
    from panda.data import CorpusSource, PandaDataModule
    from panda.data.datamodule import PackedRows
    from panda.model import PandaLM
    from panda.training.checkpoint import AtomicCheckpoint

    def run(max_steps: int, callbacks: list, ckpt_path: str | None = None) -> None:
        data = PandaDataModule(tokenizer=str(tokenizer_dir), max_seq_length=64, batch_size=1,
                               sources=[CorpusSource(name="news", paths=str(corpus), format="jsonl")],
                               cache_dir=str(tmp_path / "cache"))
        module = PandaLM(config=model_config(len(tokenizer)), monitor_throughput=False)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, callbacks=callbacks,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    resume_at = 24
    run(resume_at, [AtomicCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=resume_at)])

    built: list[int] = []
    original = PackedRows.__getitem__
    monkeypatch.setattr(PackedRows, "__getitem__", lambda rows, ids: built.append(1) or original(rows, ids))

    class CountAtFirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.built = getattr(self, "built", len(built))

    counter = CountAtFirstBatch()
    run(resume_at + 1, [counter, AtomicCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=99)],
        ckpt_path=str(tmp_path / "checkpoints" / f"step={resume_at:08d}.ckpt"))
    assert counter.built <= 2, f"{counter.built} batches built before the first resumed step (replay?)"
