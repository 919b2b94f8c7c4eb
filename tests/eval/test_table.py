import os

import pytest

from panda.eval.__main__ import main
from panda.eval.outputs import write_outputs
from panda.eval.table import find_runs, markdown_tables


def make_run(root, name, benchmark, model, mtime, **metrics):
    path = write_outputs(root / name, [], {"benchmark": benchmark, "model": model, "count": 100, **metrics})
    os.utime(path, (mtime, mtime))


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs" / "eval"
    make_run(root, "c3_d/version_0", "c3_d", "Panda-7B", 1, **{"generate/acc": 0.4302, "loglik/acc": 0.5})
    make_run(root, "logiqa/version_0", "logiqa_v2", "Panda-7B", 2, **{"generate/acc": 0.2741, "loglik/acc": 0.3})
    make_run(root, "c3_d/version_1", "c3_d", "Linly-7B", 3, **{"generate/acc": 0.3228})
    make_run(root, "c3_d/version_2", "c3_d", "Panda-7B", 4, **{"generate/acc": 0.4402})  # newer: replaces version_0
    make_run(root, "my_set/version_0", "my_set", "Linly-7B", 5, **{"loglik/acc": 0.25})
    return root


def test_table_models_by_benchmarks_newest_run_wins(runs):
    text = markdown_tables(find_runs([runs]))
    assert text.split("\n\n")[0] == "\n".join([
        "| generate/acc (%) | LogiQA-v2 | C3-d | my_set |",
        "|---|---|---|---|",
        "| Panda-7B | 27.41 (n=100) | 44.02 (n=100) | — |",
        "| Linly-7B | — | 32.28 (n=100) | — |",
    ])
    assert "| loglik/acc (%) | LogiQA-v2 | C3-d | my_set |" in text
    assert "| Panda-7B | 30.00 (n=100) | — | — |" in text  # the newer C3-d run had no log-likelihood numbers
    assert "(1 older run(s) of the same model and benchmark not shown)" in text


def test_command_line_writes_the_chosen_metric(runs, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main(["table", str(runs / "c3_d"), str(runs / "logiqa" / "version_0"), "--metric", "generate/acc",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text(encoding="utf-8")
    assert "loglik" not in printed and "my_set" not in printed and "| Linly-7B | — | 32.28 (n=100) |" in printed


def test_missing_path_and_broken_metrics_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_runs([tmp_path / "nowhere"])
    (tmp_path / "metrics.json").write_text("{\n  oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.json:2: not a metrics JSON"):
        find_runs([tmp_path])
