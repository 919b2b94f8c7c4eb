"""The README's "Rehearse on your laptop" commands, run exactly as written (in-process, from the README itself):
stock-layout tiny LLaMA (no pad token) + every public corpus layout → reference and improved Panda-7B configs with
CPU overrides → export → validate."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Rehearse on your laptop", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def run(line: str) -> None:
    """One README line: ``cd``, ``python -m panda.demo.rehearsal`` or a ``panda`` command (the console script's
    ``main``), each must succeed."""
    from panda.cli import main
    from panda.demo.rehearsal import main as rehearsal

    words = shlex.split(line)
    if words[0] == "cd":
        import os

        os.chdir(words[1])
        return
    if words[:3] == ["python", "-m", "panda.demo.rehearsal"]:
        assert rehearsal(words[3:]) == 0
        return
    assert words[0] == "panda", f"README rehearsal line not understood by the test: {line}"
    assert main(words[1:]) in (0, None), line  # sys.exit(None) is success too


def test_readme_rehearsal_runs_as_written(tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANDA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README runs from the repository root
    commands = readme_commands()
    assert any("reference/panda_7b.yaml" in c for c in commands) and any("experiments/panda_7b.yaml" in c
                                                                          for c in commands)
    for line in commands:
        run(line)
    work = tmp_path / "rehearsal"
    stock = json.loads((work / "checkpoints/llama-7b-hf/tokenizer_config.json").read_text())
    assert "pad_token" not in stock
    reference = json.loads((work / "runs/laptop/reference-hf/config.json").read_text())
    improved = json.loads((work / "runs/laptop/improved-hf/config.json").read_text())
    assert (reference["vocab_size"], reference["pad_token_id"]) == (4001, 4000)  # the reference's vocabulary
    assert (improved["vocab_size"], improved.get("pad_token_id")) == (4000, None)  # stock, as it was
    assert "pad_token" not in json.loads((work / "runs/laptop/improved-hf/tokenizer_config.json").read_text())
    (metrics,) = (work / "runs/eval/logiqa_v2").glob("version_*/metrics.json")  # the benchmark evaluation ran
    assert any(key.endswith("acc") for key in json.dumps(json.loads(metrics.read_text())).split('"'))
    out = capsys.readouterr()
    printed = out.out + out.err + caplog.text  # start-up lines are log records or stderr, by logging set-up
    assert printed.count("global batch: 4 rows per optimizer step = micro-batch 2 × world size 1 × gradient "
                         "accumulation 2") >= 2
    assert "tokenizer checkpoints/llama-7b-hf has no pad token: padded positions hold id 2 ('</s>')" in printed
    assert "LR schedule: 3 optimizer steps, 1 of them warmup (constant decay" in printed  # the reference's flat rate
    assert len(re.findall(r"│\s+val/loss\s+│\s+\d+\.\d+", printed)) == 2  # validate ran on both exports
