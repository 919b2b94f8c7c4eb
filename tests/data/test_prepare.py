"""Parallel cache builds: N processes and 2 gloo ranks give the single-process cache bit for bit; resume; bad input.

Every multi-process build runs in its own fresh subprocess (``tests/data/prepare_run.py``), so no test forks a
process that already holds threads or a process group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from panda.data import prepare
from panda.data.prepare import available_cpus, prepare_sources, resolve_num_proc
from panda.data.report import ReadReport
from panda.data.sources import CorpusSource
from panda.errors import UserError
from tests.data.mixing_corpora import write_corpora

MAX_LEN = 96
SHARE_RECORDS = 7  # many shares from a small corpus; a news file of 60 records is 9 shares
ROOT = Path(__file__).resolve().parents[2]

needs_two_cpus = pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, chinese_paragraphs) -> list[CorpusSource]:
    root = tmp_path_factory.mktemp("corpora")
    corpora = write_corpora(root, chinese_paragraphs, news=60, coig=30)
    lines = []
    for k, p in enumerate(chinese_paragraphs[200:240]):
        lines.append("{not json" if k % 9 == 4 else json.dumps({"instruction": "续写：", "input": p[:10],
                                                                 "output": p[10:50]}, ensure_ascii=False))
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [corpora["news"], corpora["coig"], CorpusSource("chat", str(root / "chat.jsonl"), "jsonl")]


@pytest.fixture()
def share_records(monkeypatch):
    monkeypatch.setattr(prepare, "SHARE_RECORDS", SHARE_RECORDS)


def build(sources, tokenizer, tokenizer_dir, cache_dir, num_proc=1):
    return prepare_sources(sources, tokenizer, tokenizer_dir, cache_dir, max_seq_length=MAX_LEN, num_proc=num_proc)


def contents(paths) -> dict[str, bytes]:
    """Every file of the published caches, by directory and file name."""
    return {f"{Path(p).name}/{f.name}": f.read_bytes() for p in paths for f in sorted(Path(p).iterdir())}


@pytest.fixture(scope="module")
def reference(sources, tokenizer, tokenizer_dir, tmp_path_factory):
    """The single-process build."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepare, "SHARE_RECORDS", SHARE_RECORDS)
        results = build(sources, tokenizer, tokenizer_dir, tmp_path_factory.mktemp("reference"))
    assert [c.meta["shares"] for c, _ in results] == [9, 5, 6]
    report = ReadReport()
    list(sources[2].read(report))
    assert results[2][0].meta["skipped"] == report.skipped > 5  # bad lines in several shares, all counted
    assert results[2][0].meta["problems"] == [str(p) for p in report.problems[:prepare.MAX_PROBLEMS]]
    return contents([c.path for c, _ in results])


def run_build(spec: Path, cache_dir: Path, num_proc: int, rank_args: tuple = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "tests.data.prepare_run", str(spec), str(cache_dir),
                             str(num_proc), *map(str, rank_args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> list[str]:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture()
def spec(sources, tokenizer_dir, tmp_path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"sources": [dataclasses.asdict(s) for s in sources], "tokenizer": str(tokenizer_dir),
                                "max_seq_length": MAX_LEN, "share_records": SHARE_RECORDS}), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_two_cpus
def test_two_processes_build_the_single_process_cache(spec, reference, tmp_path):
    assert contents(finish(run_build(spec, tmp_path / "cache", 2))) == reference


@needs_two_cpus
def test_two_ranks_build_disjoint_shares_of_one_cache(spec, reference, tmp_path):
    port = free_port()
    ranks = [run_build(spec, tmp_path / "cache", 1, (rank, 2, port)) for rank in range(2)]
    paths = [finish(rank) for rank in ranks]
    assert paths[0] == paths[1]
    assert contents(paths[0]) == reference
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == \
        sorted(Path(p).name for p in paths[0])  # no shares, probes or partial folders left


@needs_two_cpus
def test_ranks_that_do_not_share_the_cache_dir_each_build_a_full_copy(spec, reference, tmp_path):
    port = free_port()
    ranks = [run_build(spec, tmp_path / f"node{rank}", 1, (rank, 2, port)) for rank in range(2)]
    outputs = [rank.communicate(timeout=240) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    assert "is not shared by all ranks" in outputs[0][1]
    for out, _ in outputs:
        assert contents(json.loads(out.strip().splitlines()[-1])) == reference


def test_a_killed_build_keeps_its_finished_shares_and_resumes(sources, tokenizer, tokenizer_dir, tmp_path,
                                                              share_records, reference, monkeypatch):
    real, calls = prepare.build_share, []

    def build_three_then_die(jobs, share, tokenizer, settings):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill or Ctrl-C mid-build
        calls.append(share)
        return real(jobs, share, tokenizer, settings)

    monkeypatch.setattr(prepare, "build_share", build_three_then_die)
    with pytest.raises(KeyboardInterrupt):
        build(sources, tokenizer, tokenizer_dir, tmp_path / "cache")
    work = sorted((tmp_path / "cache").glob("*.shares"))
    assert len(work) == 3 and sum(len(list(w.glob("0*.json"))) for w in work) == 3
    assert not [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").exists()]  # nothing published
    (work[0] / ".000004.arrow.partial-0123abcd").write_bytes(b"half a share")  # a share the kill cut off
    resumed = []
    monkeypatch.setattr(prepare, "build_share", lambda *args: resumed.append(args[1]) or real(*args))
    results = build(sources, tokenizer, tokenizer_dir, tmp_path / "cache")
    assert len(resumed) == 9 + 5 + 6 - 3 and not set(calls) & set(resumed)
    assert contents([c.path for c, _ in results]) == reference
    assert not list((tmp_path / "cache").glob("*.shares"))


def test_num_proc_beyond_the_cpus_is_refused_naming_the_setting():
    with pytest.raises(UserError, match=r"data\.num_proc 999 is more than the \d+ CPUs available per rank"):
        resolve_num_proc(999)
    assert resolve_num_proc(None) == available_cpus()
    assert resolve_num_proc(None, local_ranks=available_cpus()) == 1


def test_progress_bar_is_quiet_when_stderr_is_not_a_terminal(sources, tokenizer, tokenizer_dir, tmp_path, capfd):
    build(sources[:1], tokenizer, tokenizer_dir, tmp_path / "cache")
    assert "preparing data" not in capfd.readouterr().err
