"""The ``panda`` command as a newcomer meets it: every command answers ``--help``, every mistake is one or two
lines naming the key or file (no traceback), ``--print_config`` is loadable YAML, and success exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from panda.cli import COMMANDS, LIGHTNING_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--config", str(ROOT / "configs" / "base.yaml"), "--config", str(ROOT / "configs" / "experiments" / "demo.yaml")]


def _error(capsys, argv: list[str]) -> tuple[int, str]:
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("panda")]
    assert 1 <= len(lines) <= 2, err
    return status, lines[0]


@pytest.fixture()
def corpus(tmp_path, chinese_paragraphs) -> Path:
    path = tmp_path / "news.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in chinese_paragraphs[:50]),
                    encoding="utf-8")
    return path


def _data(tokenizer_dir, corpus, tmp_path) -> list[str]:
    return ["--data.init_args.tokenizer", str(tokenizer_dir), "--data.init_args.sources",
            f"[{{name: news, paths: {corpus}, format: jsonl}}]", "--data.init_args.val_sources", "[]",
            "--data.init_args.cache_dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("command", [*LIGHTNING_COMMANDS, *COMMANDS])
def test_every_command_answers_help(command, capsys):
    try:
        status = main([command, "--help"])
    except SystemExit as exit_:  # argparse-style parsers exit after printing help
        status = exit_.code or 0
    assert status == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_fit_help_lists_the_training_module_and_data_module_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--model.init_args.lr_schedule" in out and "--data.init_args.max_seq_length" in out


def test_unknown_command_suggests_the_closest(capsys):
    status, line = _error(capsys, ["fitt"])
    assert status == 2 and "did you mean 'fit'?" in line


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.lr_shedule", "cosine"],
     "model.init_args.lr_shedule: panda.model.module.PandaLM has no argument 'lr_shedule' (did you mean 'lr_schedule'?)"),
    (["--trainer.max_stepz", "3"], "trainer.max_stepz: lightning.pytorch.Trainer has no argument 'max_stepz' "
                                   "(did you mean 'max_steps'?)"),
    (["--trainer.max_steps", "abc"], "trainer.max_steps: expected int, got 'abc'"),
    (["--data.init_args.batch_size", "x"], "data.init_args.batch_size: expected int, got 'x'"),
    (["--model.init_args.optimizer.init_args.lrr", "3"], "(did you mean 'lr'?)"),
    (["--optimizer", "Adam"], "--optimizer: set model.init_args.optimizer"),
    (["--config", "missing.yaml"], "missing.yaml: no such file"),
])
def test_a_mistake_on_the_command_line_is_one_line_naming_the_key(capsys, override, expected):
    status, line = _error(capsys, ["fit", *DEMO, *override])
    assert status == 2 and expected in line


def test_a_misspelt_key_in_yaml_is_named(capsys, tmp_path):
    layer = tmp_path / "mine.yaml"
    layer.write_text("model:\n  init_args:\n    lr_shedule: cosine\n", encoding="utf-8")
    status, line = _error(capsys, ["fit", *DEMO, "--config", str(layer)])
    assert status == 2 and "lr_shedule" in line and "did you mean 'lr_schedule'?" in line


def test_a_misspelt_format_name_is_suggested(capsys, tokenizer_dir, tmp_path):
    status, line = _error(capsys, ["fit", *DEMO, "--data.init_args.tokenizer", str(tokenizer_dir),
                                   "--data.init_args.sources", "[{name: x, paths: x.jsonl, format: jsonll}]"])
    assert status == 2 and "data.init_args.sources.format" in line and "did you mean 'jsonl'?" in line


def test_missing_required_keys_are_named(capsys):
    status, line = _error(capsys, ["fit", "--config", str(ROOT / "configs" / "base.yaml")])
    assert status == 2 and "missing required data.init_args.tokenizer, data.init_args.sources" in line


def test_missing_tokenizer_directory_is_named_not_a_hub_error(capsys, corpus, tmp_path):
    status, line = _error(capsys, ["fit", *DEMO, *_data(tmp_path / "no-such-tokenizer", corpus, tmp_path),
                                   "--trainer.max_steps", "1"])
    assert status == 1 and "no-such-tokenizer: no such directory" in line and "Repo id" not in line


def test_missing_corpus_is_named(capsys, tokenizer_dir, tmp_path):
    status, line = _error(capsys, ["fit", *DEMO, *_data(tokenizer_dir, tmp_path / "nowhere.jsonl", tmp_path),
                                   "--trainer.max_steps", "1"])
    assert status == 1 and "nowhere.jsonl" in line


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_a_corrupt_checkpoint_is_named_before_anything_is_built(capsys, tmp_path, content):
    broken = tmp_path / "step=100.ckpt"
    broken.write_bytes(content)
    status, line = _error(capsys, ["fit", *DEMO, "--ckpt_path", str(broken)])
    assert status == 1 and "step=100.ckpt is truncated or not a PyTorch checkpoint" in line


def test_a_tokenizer_that_does_not_fit_the_model_is_named(capsys, tokenizer_dir, corpus, tmp_path):
    small = tmp_path / "small_vocab.yaml"
    small.write_text(yaml.safe_dump({"model": {"init_args": {"config": {
        **yaml.safe_load((ROOT / "configs" / "experiments" / "demo.yaml").read_text())["model"]["init_args"]["config"],
        "vocab_size": 100}}}}), encoding="utf-8")
    status, line = _error(capsys, ["fit", *DEMO, "--config", str(small), *_data(tokenizer_dir, corpus, tmp_path),
                                   "--trainer.max_steps", "1"])
    assert status == 1 and "100 vocabulary rows" in line and "data.tokenizer has 4000 tokens" in line


def _panda(*args: str, **kwargs) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("panda")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "panda"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kwargs)


def test_print_config_is_loadable_yaml_on_stdout_and_a_run_exits_zero(tokenizer_dir, corpus, tmp_path):
    printed = _panda("fit", "--config", "configs/base.yaml", "--config", "configs/experiments/panda_7b.yaml",
                     "--print_config")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)  # DeepSpeed's "Setting accelerator to CPU" no longer on stdout
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-5

    run = _panda("fit", *DEMO, *_data(tokenizer_dir, corpus, tmp_path), "--trainer.fast_dev_run", "1",
                 "--trainer.logger", "false", "--trainer.callbacks", "[]",
                 "--data.init_args.max_seq_length", "64")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "PandaCLI object" not in run.stdout
