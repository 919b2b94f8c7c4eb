"""What the data module will train on: the per-source table (records, examples, tokens, rows, weights, first bad
records) and what one epoch of the plan holds (realized mixture against the weights, useful-token fraction).

Both read only the caches' metadata and the mixture plan — no batch is built — so ``panda data stats`` is quick on
any corpus size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from panda.data.collate import PAD_MULTIPLE, pad_width

if TYPE_CHECKING:
    from panda.data.datamodule import PandaDataModule


def epoch_stats(dm: PandaDataModule, epoch: int = 0) -> dict:
    """What epoch ``epoch`` of the training plan holds, over all ranks: per source its rows, sequences and
    tokens, its target share of sequences (``weight * sequences``, normalized) against the realized share,
    and the useful-token fraction (real tokens / padded positions of every batch)."""
    sampler = dm.train_sampler()
    plan = sampler.plan(epoch)
    rows = dm.train_rows
    sequences = rows.row_sequence_counts()
    lengths = rows.row_lengths()
    entry_of_row = np.searchsorted(rows.offsets, plan, side="right") - 1
    per_source = {}
    target = np.array([w * sequences[rows.offsets[i]:rows.offsets[i + 1]].sum()
                       for i, w in enumerate(dm.weights)], dtype=np.float64)
    total_seqs, total_tokens = sequences[plan].sum(), lengths[plan].sum()
    for i, source in enumerate(dm.sources):
        mine = plan[entry_of_row == i]
        per_source[source.name] = {
            "weight": source.weight, "rows": len(mine), "sequences": int(sequences[mine].sum()),
            "tokens": int(lengths[mine].sum()), "target_share": float(target[i] / max(target.sum(), 1e-12)),
            "realized_share": float(sequences[mine].sum() / max(total_seqs, 1)),
            "token_share": float(lengths[mine].sum() / max(total_tokens, 1)),
        }
    batches = len(sampler)
    positions = np.arange(batches * dm.batch_size * dm.world_size) % len(plan)
    batch_lengths = lengths[plan[positions]].reshape(-1, dm.batch_size)  # (batches * world_size, B)
    widths = np.full(len(batch_lengths), dm.max_seq_length)
    if dm.pad_to == "longest":
        widths = pad_width(batch_lengths.max(axis=1), PAD_MULTIPLE, dm.max_seq_length)
    useful = batch_lengths.sum() / max(int((widths * dm.batch_size).sum()), 1)
    # loss tokens per source are known in total; weight each source's share of them by its tokens in the plan
    loss_tokens = sum(s["tokens"] * c.meta["encoding"]["loss_tokens"] / max(c.meta["encoding"]["tokens"], 1)
                      for s, c in zip(per_source.values(), rows.caches))
    return {"sources": per_source, "batches": batches, "useful_fraction": float(useful),
            "loss_fraction": loss_tokens / max(int(total_tokens), 1)}

def source_table(dm: PandaDataModule) -> str:
    """Per-source table: records read/used/skipped, examples, sequences, truncated/dropped, tokens, loss
    tokens, packed rows and mixture weight; then the first bad records."""
    header = ("source", "split", "read", "used", "skipped", "examples", "seqs", "trunc", "dropped", "tokens",
              "loss_tok", "rows", "weight")
    table = [header]
    problems = []
    entries = [(c, "train", s.weight) for c, s in zip(dm.train_caches, dm.sources)]
    entries += [(c, "val", "-") for c in dm.val_caches]
    for cache, split, weight in entries:
        m, enc = cache.meta, cache.meta["encoding"]
        table.append((m["name"], split, m["read"], m["used"], m["skipped"], enc["examples"], enc["sequences"],
                      enc["truncated"], enc["dropped"], enc["tokens"], enc["loss_tokens"], m["rows"], weight))
        problems += [f"  {m['name']}: {p}" for p in m["problems"]]
    widths = [max(len(str(row[k])) for row in table) for k in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if k > 1 else str(v).ljust(w) for k, (v, w) in enumerate(zip(row, widths)))
             for row in table]
    if dm.val_fraction:
        lines.append(f"val_fraction {dm.val_fraction}: {len(dm.val_rows or [])} rows held out for validation")
    if problems:
        lines.append("first bad records (all are counted above):")
        lines += problems
    return "\n".join(lines)

