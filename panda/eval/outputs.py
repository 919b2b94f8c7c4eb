"""What an evaluation run leaves in its directory (the trainer's ``log_dir``).

- ``predictions.jsonl``: one record per question, sorted by question index (see :mod:`panda.eval.scoring` for
  the fields: the exact prompt, the generated text and extracted letter, every option's continuation string,
  log-probability sum, token and character counts) — enough to recompute every number without the model.
- ``metrics.json``: the benchmark, model, protocol settings and ``count``, ``generate/acc``,
  ``generate/unparseable_rate``, ``loglik/acc``, ``loglik/acc_norm`` (those of the protocols run).
- TensorBoard scalars ``eval/<benchmark>/<metric>`` are written by the logger, not here.

Records from several ranks are gathered with ``torch.distributed.all_gather_object`` and merged by question index,
keeping the first copy of a question that the distributed sampler padded in twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch.distributed as dist

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


def merge_records(shards: Iterable[Sequence[dict]]) -> list[dict]:
    """All records of all ranks, one per question index, sorted by index (first copy wins)."""
    merged: dict[int, dict] = {}
    for shard in shards:
        for record in shard:
            merged.setdefault(record["index"], record)
    return [merged[index] for index in sorted(merged)]


def gather_records(records: Sequence[dict]) -> list[dict]:
    """Every rank's records merged (on every rank); a no-op merge when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards: list = [None] * dist.get_world_size()
        dist.all_gather_object(shards, list(records))
        return merge_records(shards)
    return merge_records([records])


def write_outputs(run_dir: str | Path, records: Sequence[dict], metrics: dict) -> Path:
    """Write ``predictions.jsonl`` and ``metrics.json`` into ``run_dir``; returns the metrics file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / PREDICTIONS_FILE).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    path = run_dir / METRICS_FILE
    path.write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
