"""A two-node rehearsal on one machine: the README's multi-node commands as written, on CPU (gloo, ZeRO-1).

``trainer.num_nodes: 2, devices: 1``; each "node" is one process started by the test, with the rendezvous of a real
cluster pointed at ``127.0.0.1``:

- Lightning's own launch: ``MASTER_ADDR=127.0.0.1 MASTER_PORT=... NODE_RANK=0|1 python lightning_main.py fit ...``
- ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank 0|1 --master_addr 127.0.0.1 --master_port ... \\
  lightning_main.py fit ...``

The first run trains 8 steps with Lightning's launch and saves a ZeRO-1 checkpoint (one folder, one optimizer shard
per node) at steps 4 and 8; the second resumes the step-4 checkpoint with torchrun. The two nodes must see disjoint
rows, and the resumed run must log the first run's losses on steps 4-7 and end with bit-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from tests.training.test_resume import ROOT, corpus, final_weights, logged_losses, write_config  # noqa: F401

STEPS, EVERY = 8, 4


class RecordRows(L.Callback):
    """Test helper: each rank writes the sha1 of every training row it saw to ``<directory>/rows-rank<r>.json``."""

    def __init__(self, directory: str) -> None:
        self.directory, self.rows = Path(directory), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows += [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in batch["input_ids"].cpu()]

    def on_train_end(self, trainer, pl_module) -> None:
        (self.directory / f"rows-rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_config(path: Path, run_dir: Path, tokenizer_dir, corpus, vocab: int) -> Path:
    record = {"class_path": f"{__name__}.RecordRows", "init_args": {"directory": str(run_dir)}}
    write_config(path, run_dir, tokenizer_dir, corpus, vocab, [record])
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["trainer"].update(num_nodes=2, devices=1, max_steps=STEPS)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def launch_two_nodes(commands: list[list[str]], envs: list[dict], log_dir: Path) -> None:
    """Start both "nodes", wait for both; fail with their logs if either fails."""
    processes, logs = [], []
    for node, (command, env) in enumerate(zip(commands, envs)):
        logs.append(open(log_dir / f"node{node}.log", "w"))
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=400) for p in processes]
    finally:
        for process, log in zip(processes, logs):
            process.kill() if process.poll() is None else None
            log.close()
    assert codes == [0, 0], "\n".join((log_dir / f"node{n}.log").read_text()[-3000:] for n in (0, 1))


def base_env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    return env


def lightning_launch(config: Path, *extra: str) -> tuple[list[list[str]], list[dict]]:
    port = str(free_port())
    command = [sys.executable, "lightning_main.py", "fit", "--config", str(config), *extra]
    envs = [{**base_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(n)} for n in (0, 1)]
    return [command, command], envs


def torchrun_launch(config: Path, *extra: str) -> tuple[list[list[str]], list[dict]]:
    port = str(free_port())
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    commands = [[torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(n), "--master_addr",
                 "127.0.0.1", "--master_port", port, "lightning_main.py", "fit", "--config", str(config), *extra]
                for n in (0, 1)]
    return commands, [base_env(), base_env()]


@pytest.mark.parametrize("first, second", [
    (lightning_launch, torchrun_launch),
    pytest.param(torchrun_launch, lightning_launch, marks=pytest.mark.slow),
])
def test_two_nodes_train_disjoint_rows_checkpoint_once_and_resume_exactly(tmp_path, tokenizer_dir, tokenizer, corpus,
                                                                         first, second):
    vocab = len(tokenizer)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full_dir.mkdir()
    launch_two_nodes(*first(node_config(tmp_path / "full.yaml", full_dir, tokenizer_dir, corpus, vocab)), full_dir)

    rows = [json.loads((full_dir / f"rows-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(rows[0]) == len(rows[1]) == STEPS * 2
    assert not set(rows[0]) & set(rows[1]), "the two nodes trained on the same rows"  # 8 steps: within one epoch
    checkpoint = full_dir / "checkpoints" / f"step={EVERY:08d}.ckpt"
    shards = sorted(p.name for p in (checkpoint / "checkpoint").glob("*optim_states.pt"))
    assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]  # one per node

    resumed_dir.mkdir()
    launch_two_nodes(*second(node_config(tmp_path / "resumed.yaml", resumed_dir, tokenizer_dir, corpus, vocab),
                             "--ckpt_path", str(checkpoint)), resumed_dir)
    reference, resumed = logged_losses(full_dir), logged_losses(resumed_dir)
    assert sorted(reference) == list(range(STEPS))
    assert resumed == {s: reference[s] for s in range(EVERY, STEPS)}
    name = f"step={STEPS:08d}.ckpt"
    (full_module, full_fp32), (cut_module, cut_fp32) = (final_weights(d / "checkpoints" / name)
                                                        for d in (full_dir, resumed_dir))
    assert all(full_module[k].equal(cut_module[k]) for k in full_module)
    assert all(full_fp32[k].equal(cut_fp32[k]) for k in full_fp32)
