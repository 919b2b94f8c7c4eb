"""Collect evaluation runs into markdown tables — models as rows, benchmarks as columns, like the reference's.

Every ``metrics.json`` found under the given paths (a run directory, or any folder above runs) is one cell source:
its ``model`` label (with ``@step`` for periodic evaluations during training) picks the row, its ``benchmark`` the
column. One table per metric (``generate/acc``, ``generate/unparseable_rate``, ``loglik/acc``, ``loglik/acc_norm``, and
for the exam suites ``subject_mean/…``, the mean over subjects), values in percent with two decimals, ``n`` =
questions scored. With ``subjects=True`` each exam suite also gets a table of subjects × models. When the same (model, benchmark) was run more than
once, the newest ``metrics.json`` wins and the table says how many runs were superseded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from panda.eval.outputs import METRICS_FILE

BASE_METRICS = ("generate/acc", "generate/unparseable_rate", "loglik/acc", "loglik/acc_norm")
METRICS = BASE_METRICS + tuple(f"subject_mean/{metric}" for metric in BASE_METRICS)
BENCHMARK_TITLES = {"logiqa_v2": "LogiQA-v2", "c3_d": "C3-d", "c3_m": "C3-m", "ceval": "C-Eval", "cmmlu": "CMMLU",
                    "agieval": "AGIEval-zh"}


def find_runs(paths: Iterable[str | Path]) -> list[dict]:
    """The metrics of every run under ``paths``, oldest first, each with its ``metrics_path``."""
    files: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file() and path.name == METRICS_FILE:
            files.add(path)
        elif path.is_dir():
            files.update(path.rglob(METRICS_FILE))
        else:
            raise FileNotFoundError(f"{path}: no such run directory or {METRICS_FILE}")
    runs = []
    for file in sorted(files, key=lambda f: (f.stat().st_mtime, str(f))):
        try:
            metrics = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}:{error.lineno}: not a metrics JSON ({error.msg})") from error
        runs.append({**metrics, "metrics_path": str(file)})
    return runs


def _row_label(run: dict) -> str:
    label = run.get("model") or Path(run["metrics_path"]).parent.name
    return f"{label}@{run['step']}" if run.get("step") is not None else label


def _latest(runs: Sequence[dict]) -> tuple[dict[tuple[str, str], dict], int]:
    cells: dict[tuple[str, str], dict] = {}
    superseded = 0
    for run in runs:
        key = (_row_label(run), run.get("benchmark", "?"))
        superseded += key in cells
        cells[key] = run
    return cells, superseded


def subject_tables(runs: Sequence[dict], metrics: Sequence[str] | None = None) -> list[str]:
    """Per exam suite and metric: subjects as rows, models as columns (runs that recorded ``subjects``)."""
    cells, _ = _latest(runs)
    out = []
    for bench in sorted({b for (_, b), run in cells.items() if run.get("subjects")}):
        models = [m for (m, b), run in cells.items() if b == bench and run.get("subjects")]
        subjects = sorted({s for m in models for s in cells[(m, bench)]["subjects"]})
        for metric in [m for m in (metrics or BASE_METRICS) if m in BASE_METRICS]:
            if not any(metric in cells[(m, bench)]["subjects"].get(s, {}) for m in models for s in subjects):
                continue
            lines = [f"| {BENCHMARK_TITLES.get(bench, bench)} {metric} (%) | " + " | ".join(models) + " |",
                     "|" + "---|" * (len(models) + 1)]
            for subject in subjects:
                values = []
                for model in models:
                    row = cells[(model, bench)]["subjects"].get(subject, {})
                    value = row.get(metric)
                    values.append("—" if value is None else f"{100 * value:.2f} (n={row.get('count', '?')})")
                lines.append(f"| {subject} | " + " | ".join(values) + " |")
            out.append("\n".join(lines))
    return out


def markdown_tables(runs: Sequence[dict], metrics: Sequence[str] | None = None, subjects: bool = False) -> str:
    """One markdown table per metric present in ``runs`` (or per metric in ``metrics``), and with ``subjects`` the
    per-subject tables of the exam suites."""
    cells, superseded = _latest(runs)
    rows = list(dict.fromkeys(model for model, _ in cells))
    known = [b for b in BENCHMARK_TITLES if any(b == bench for _, bench in cells)]
    columns = known + sorted({bench for _, bench in cells} - set(known))
    metrics = [m for m in (metrics or METRICS) if any(m in run for run in cells.values())]
    out = []
    for metric in metrics:
        header = [f"{metric} (%)"] + [BENCHMARK_TITLES.get(b, b) for b in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model in rows:
            values = []
            for bench in columns:
                run = cells.get((model, bench))
                value = run.get(metric) if run else None
                values.append("—" if value is None else f"{100 * value:.2f} (n={run.get('count', '?')})")
            lines.append("| " + " | ".join([model] + values) + " |")
        out.append("\n".join(lines))
    if subjects:
        out += subject_tables(runs, metrics)
    if superseded:
        out.append(f"({superseded} older run(s) of the same model and benchmark not shown)")
    return "\n\n".join(out) + "\n" if out else "no metrics found\n"
