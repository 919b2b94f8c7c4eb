"""The demo's orchestration: it names the step that failed, finds the run's checkpoint, and (slow) runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from panda.demo import __main__ as demo

REPO = Path(__file__).resolve().parents[2]


def test_failed_command_names_the_step():
    with pytest.raises(demo.DemoStepError, match=r"^export: `.*` exited with status 3"):
        demo._run("export", [sys.executable, "-c", "import sys; sys.exit(3)"])


def test_last_checkpoint_prefers_last_ckpt(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("last.ckpt", "epoch=0-step=300.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert demo.last_checkpoint(tmp_path, checkpoint_dir=tmp_path / "none").name == "last.ckpt"
    with pytest.raises(demo.DemoStepError, match="no checkpoint"):
        demo.last_checkpoint(tmp_path / "checkpoints" / "nothing-here", checkpoint_dir=tmp_path / "none")


def test_last_checkpoint_looks_in_the_fixed_folder_for_this_runs_files(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    old, new = shared / "step=00000100.ckpt", shared / "step=00000400.ckpt"
    old.write_bytes(b"")
    new.write_bytes(b"")
    os.utime(old, (1000, 1000))
    os.utime(new, (3000, 3000))
    assert demo.last_checkpoint(tmp_path / "run", since=2000, checkpoint_dir=shared) == new
    with pytest.raises(demo.DemoStepError, match="written by this run"):
        demo.last_checkpoint(tmp_path / "run", since=4000, checkpoint_dir=shared)


def test_report_prints_both_perplexities_and_accuracies(capsys):
    evaluation = {"C3-format continuation": {"count": 200, "loglik/acc": 0.31, "loglik/acc_norm": 0.335},
                  "LogiQA-v2-format sentiment": {"count": 200, "loglik/acc": 0.62, "loglik/acc_norm": 0.6}}
    demo.print_report(8228.0, 412.5, evaluation, Path("runs/demo/run-x"), 250.0)
    out = capsys.readouterr().out
    assert "| 8,228.0 | 412.5 (19.9x lower) |" in out
    assert "| C3-format continuation | 200 | 0.310 | 0.335 | 0.25 |" in out
    assert "| LogiQA-v2-format sentiment | 200 | 0.620 | 0.600 | 0.50 |" in out
    assert "tensorboard --logdir runs/demo/run-x" in out


@pytest.mark.slow
def test_demo_end_to_end():
    """`python -m panda.demo` as `make demo` runs it: exit 0 means every step ran and the perplexity fell 5x."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "panda.demo"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "untrained val/ppl" in result.stdout and "tensorboard --logdir runs/demo/run-" in result.stdout


def test_replies_to_the_first_held_out_dialogues(tmp_path, model_dir, monkeypatch, capsys):
    import json

    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    dialogues = [[{"inputs": f"问题{i}", "targets": f"回答{i}"}] for i in range(5)]
    (data / "val" / "dialogues.json").write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(demo, "DATA_DIR", data)
    replies = demo.step_replies(model_dir, tmp_path)
    assert [r["messages"][0]["content"] for r in replies] == ["问题0", "问题1", "问题2"]
    demo.print_replies(replies)
    out = capsys.readouterr().out
    assert "| 问题0 | " in out and out.rstrip().endswith("| 回答2 |")
