"""Build the source caches in parallel: worker processes on each machine, a disjoint share of the work per rank.

Tokenizing is the cost of a cache build (≈ 150k tokens/s per process: a day on one process for Panda-7B's ≈ 10B
tokens), so every process of a job takes part. The work is cut into *shares* — :data:`SHARE_RECORDS` consecutive
records of one file — by the corpus alone, never by the number of processes::

    news.json   (2,500 records)  → share 0: records [0, 1024)  share 1: [1024, 2048)  share 2: [2048, 2500)
    chat.jsonl  (  900 records)  → share 3: records [0, 900)

    rank r of a world of W takes shares r, r + W, r + 2W, …; its ``num_proc`` worker processes
    (``multiprocessing.Pool``) take them as they become free. Each share is written whole
    ({source}-{key}.shares/000003.{arrow,npy,json}, under a temporary name then renamed), and when every rank is
    done (a ``torch.distributed`` barrier) one rank concatenates the shares in order, packs the rows and publishes
    the cache (:mod:`panda.data.cache`).

Because shares, their order and their record batches do not depend on who built them, the published cache is the
same bit for bit for any ``num_proc`` and world size. A killed build leaves its finished shares; the next run
(same key) only builds the missing ones. Before splitting the work the ranks check that they see one cache
directory: each writes a probe file and lists the others'. Ranks that do not see each other's files (a node-local
``cache_dir``) are told so and each such group builds its own complete copy — never a cache split across disks.

Counting a file's records is the only extra pass (once, cached as the shares' ``index.json``); it also notes
where every share of a JSON-lines file starts (its byte offset; for a gzip file, its line), so that a share reads
and parses only its own records — otherwise the N shares of one large file would each parse it up to their
start, O(N²) for the file. A JSON array file is parsed whole by each of its shares.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from filelock import FileLock

from panda.data.cache import (WRITE_BATCH, CachedSource, cache_key_inputs, cache_path, compact_batch,
                              pack_rows, sequence_schema, tokenizer_fingerprint)
from panda.data.report import BadRecordError, ReadReport, RecordProblem, SourceCounts
from panda.data.sources import CorpusSource, Mark, scan_records
from panda.data.tokenize import EncodingStats, Truncation, encode_examples
from panda.errors import UserError
from panda.io import atomic_directory, atomic_path
from panda.progress import progress as progress_bar

log = logging.getLogger(__name__)

SHARE_RECORDS = 1024
"""Records per share: small enough to balance a few-file corpus over the workers, large enough that the
per-share costs (re-parsing the file up to it, three small files) stay negligible."""

ENCODE_BATCH = 256
"""Examples per batched call of the fast tokenizer."""

MAX_PROBLEMS = 20
"""Bad records kept (and logged) per source; all are counted."""

BARRIER_TIMEOUT = timedelta(hours=24)
"""How long a rank waits for the others (a rank may finish its shares long before the slowest)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One source cache to build: the source, its key inputs and where it is published."""

    source: CorpusSource
    inputs: dict
    final: Path

    @property
    def work(self) -> Path:
        """Where the finished shares wait for the publish (kept across a killed build)."""
        return self.final.with_name(self.final.name + ".shares")


@dataclasses.dataclass(frozen=True)
class Share:
    """Records ``[start, stop)`` of ``file``; the ``index``-th share of job ``job``. A source read only up to its
    ``max_records`` is one share over all its files (``file == ""``): where its limit ends depends on every record
    before it."""

    job: int
    index: int
    file: str
    start: int
    stop: int
    mark: Mark | None = None  # where record ``start`` begins in a JSON-lines file (read from there, see below)

    def base(self, jobs: Sequence[Job]) -> Path:
        return jobs[self.job].work / f"{self.index:06d}"


@dataclasses.dataclass(frozen=True)
class Settings:
    max_seq_length: int
    packing: bool
    truncation: Truncation
    vocab_size: int

    @property
    def schema(self) -> pa.Schema:
        return sequence_schema(self.vocab_size, self.max_seq_length)


# ---- processes, ranks, CPUs ------------------------------------------------------------------------------------

def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which SLURM and containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Ranks:
    """This process's place in the job and the ranks it shares a cache directory with.

    Without ``torch.distributed`` (or with one process) it is a world of one and every collective is a no-op.
    """

    def __init__(self, cache_dir: Path) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.group_ranks, self.local_ranks = [0], 1
        self.pg = None
        if self.world > 1:
            self.pg = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
            self._find_groups(cache_dir)

    def _find_groups(self, cache_dir: Path) -> None:
        nonce = [uuid.uuid4().hex if self.rank == 0 else None]
        self.dist.broadcast_object_list(nonce, src=0, group=self.pg)
        probe = cache_dir / f".probe-{nonce[0]}-{self.rank}"
        probe.touch()
        self.barrier()
        seen = [r for r in range(self.world) if (cache_dir / f".probe-{nonce[0]}-{r}").exists()]
        views = self.gather((seen, socket.gethostname()))
        self.barrier()
        probe.unlink()
        self.group_ranks = [r for r in range(self.world) if views[r][0] == seen]
        self.local_ranks = sum(host == views[self.rank][1] for _, host in views)
        groups = sorted({tuple(v[0]) for v in views})
        if len(groups) > 1 and self.rank == 0:
            described = " | ".join(",".join(map(str, g)) for g in groups)
            log.warning("data.cache_dir %s is not shared by all ranks (ranks seeing the same files: %s): each group "
                        "builds its own complete copy of the cache", cache_dir, described)

    @property
    def member(self) -> int:
        """This rank's index among the ranks that share its cache directory."""
        return self.group_ranks.index(self.rank)

    @property
    def leader(self) -> bool:
        return self.member == 0

    def gather(self, value) -> list:
        if self.world == 1:
            return [value]
        values = [None] * self.world
        self.dist.all_gather_object(values, value, group=self.pg)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier(group=self.pg)

    def raise_any(self, error: BaseException | None) -> None:
        """Every rank stops if any rank failed: its own error, else the first failed rank's."""
        errors = self.gather(_portable(error))
        if error is not None:
            raise error
        for rank, other in enumerate(errors):
            if other is not None:
                raise other if isinstance(other, BaseException) else RuntimeError(f"rank {rank}: {other}")


def _portable(error: BaseException | None):
    """The error itself when it pickles (user errors do), else its text."""
    if error is None:
        return None
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return f"{type(error).__name__}: {error}"


def resolve_num_proc(num_proc: int | None, local_ranks: int = 1) -> int:
    """``num_proc``, or the CPUs available per local rank; refuse more processes than that."""
    per_rank = max(available_cpus() // max(local_ranks, 1), 1)
    if num_proc is None:
        return per_rank
    if num_proc < 1:
        raise UserError(f"data.num_proc must be at least 1, got {num_proc}")
    if num_proc > per_rank:
        raise UserError(f"data.num_proc {num_proc} is more than the {per_rank} CPUs available per rank "
                        f"({available_cpus()} CPUs, {local_ranks} rank(s) on this machine); use at most {per_rank} "
                        "or leave it unset")
    return num_proc


# ---- the work of one process -----------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tokenizer, jobs: Sequence[Job], settings: Settings) -> None:
    _WORKER.update(tokenizer=tokenizer, jobs=jobs, settings=settings)


def _count(task: tuple[int, str]) -> tuple[int, dict[int, Mark]]:
    return scan_records(task[1], SHARE_RECORDS)


def _build(share: Share) -> tuple[int, int]:
    return build_share(_WORKER["jobs"], share, _WORKER["tokenizer"], _WORKER["settings"])


def _publish(job_index: int) -> None:
    publish(_WORKER["jobs"][job_index], _WORKER["settings"])


def _write_atomically(path: Path, write) -> None:
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        write(f)


def build_share(jobs: Sequence[Job], share: Share, tokenizer, settings: Settings) -> tuple[int, int]:
    """Read, tokenize and write one share; return its records and tokens.

    Files: ``.arrow`` (compact sequences), ``.npy`` (their lengths), then ``.json`` (counts, encoding stats,
    first problems) — the ``.json`` is written last and marks the share done.
    """
    job = jobs[share.job]
    report = ReadReport(max_warnings=0, max_kept=MAX_PROBLEMS)
    stats = EncodingStats()
    pending, ids, labels, lengths = [], [], [], []
    base = share.base(jobs)
    schema = settings.schema

    def encode(writer) -> None:
        for encoded in encode_examples(pending, tokenizer, settings.max_seq_length, truncation=settings.truncation):
            stats.add(encoded)
            for sequence in encoded.sequences:
                ids.append(sequence.input_ids)
                labels.append(sequence.labels)
                lengths.append(len(sequence.input_ids))
                if len(ids) >= WRITE_BATCH:
                    flush(writer)
        pending.clear()

    def flush(writer) -> None:
        if ids:
            writer.write_batch(compact_batch(ids, labels, schema))
            ids.clear()
            labels.clear()

    def write_sequences(f) -> None:
        with pa.ipc.new_stream(f, schema) as writer:
            examples = (job.source.read_file(share.file, report, records=range(share.start, share.stop),
                                             mark=share.mark)
                        if share.file else job.source.read(report))
            for example in examples:
                pending.append(example)
                if len(pending) >= ENCODE_BATCH:
                    encode(writer)
            encode(writer)
            flush(writer)

    _write_atomically(base.with_suffix(".arrow"), write_sequences)
    _write_atomically(base.with_suffix(".npy"), lambda f: np.save(f, np.asarray(lengths, dtype=np.int32)))
    counts = report.counts.get(job.source.name, SourceCounts())
    summary = {"records": counts.read, "counts": dataclasses.asdict(counts),
               "encoding": stats.as_dict(),
               "problems": [[p.path, p.line_or_index, p.reason] for p in report.problems]}
    _write_atomically(base.with_suffix(".json"), lambda f: f.write(json.dumps(summary).encode()))
    return counts.read, stats.tokens


def publish(job: Job, settings: Settings) -> None:
    """Concatenate a job's finished shares in order, pack the rows, and publish the cache directory."""
    infos = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(job.work.glob("0*.json"))]
    bases = [job.work / f"{k:06d}" for k in range(len(infos))]
    if (job.final / "meta.json").exists():  # another builder published it first: the same content
        shutil.rmtree(job.work, ignore_errors=True)
        return
    with atomic_directory(job.final, overwrite=True) as tmp:
        with pa.OSFile(str(tmp / "sequences.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, settings.schema) as writer:
            for base in bases:
                with pa.memory_map(str(base.with_suffix(".arrow"))) as source:
                    for batch in pa.ipc.open_stream(source):
                        writer.write_batch(batch)
        lengths = (np.concatenate([np.load(b.with_suffix(".npy")) for b in bases]) if bases
                   else np.zeros(0, dtype=np.int32))
        offsets, items = pack_rows(lengths, settings.max_seq_length, settings.packing)
        for name, array in (("lengths", lengths), ("row_offsets", offsets), ("row_items", items)):
            np.save(tmp / f"{name}.npy", array)
        counts, stats = SourceCounts(), EncodingStats()
        problems = []
        for info in infos:
            for key, value in info["counts"].items():
                setattr(counts, key, getattr(counts, key) + value)
            stats.merge(EncodingStats(**info["encoding"]))
            problems += [RecordProblem(path, where, reason) for path, where, reason in info["problems"]]
        problems = problems[:MAX_PROBLEMS]
        for problem in problems:
            log.warning("source %r: skipped %s", job.source.name, problem)
        meta = {
            "name": job.source.name, "read": counts.read, "used": counts.used, "skipped": counts.skipped,
            "examples": stats.examples, "encoding": stats.as_dict(), "rows": len(offsets) - 1,
            "problems": [str(p) for p in problems],
            "first_problem": dataclasses.asdict(problems[0]) if problems else None,
            "format": {"input_ids": str(settings.schema.field("input_ids").type.value_type),
                       "labels": "trained spans"},
            "shares": len(infos), "key_inputs": job.inputs,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(job.work, ignore_errors=True)
    log.info("cached source %r: %d sequences in %d rows at %s", job.source.name, len(lengths), len(offsets) - 1,
             job.final)


# ---- the whole build -------------------------------------------------------------------------------------------

def check_strict(source: CorpusSource, cache: CachedSource) -> None:
    """A strict source stops at its first bad record even when the cache (built leniently) already exists."""
    if source.strict and cache.meta.get("skipped"):
        first = cache.meta.get("first_problem")
        problem = RecordProblem(**first) if first else RecordProblem(str(source.paths), None,
                                                                      cache.meta["problems"][0])
        raise BadRecordError(problem, source.name)


@contextmanager
def _pool(num_proc: int, tokenizer, jobs: Sequence[Job], settings: Settings) -> Iterator:
    """``imap`` over a fork pool of ``num_proc`` workers, or in this process for one."""
    if num_proc == 1:
        _init_worker(tokenizer, jobs, settings)
        try:
            yield map
        finally:
            _WORKER.clear()
        return
    with multiprocessing.get_context("fork").Pool(num_proc, _init_worker, (tokenizer, jobs, settings)) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=1)


def prepare_sources(sources: Sequence[CorpusSource], tokenizer, tokenizer_dir: str | Path, cache_dir: str | Path,
                    *, max_seq_length: int, packing: bool = True, truncation: Truncation = "trim_prompt_start",
                    num_proc: int | None = None, progress: bool = True) -> list[tuple[CachedSource, bool]]:
    """Every source's cache, building the missing ones with every rank and ``num_proc`` processes per rank.

    Under ``torch.distributed`` every rank must call this (it holds barriers); without it, one process builds.

    Args:
        sources: The sources (training and validation).
        tokenizer: The loaded tokenizer of ``tokenizer_dir``.
        tokenizer_dir: Its directory (its files are part of the key).
        cache_dir: Root of the cache.
        max_seq_length: Longest sequence; also the packing capacity.
        packing: Pack sequences into rows (``False``: one sequence per row).
        truncation: Policy for over-long instructions (see :func:`panda.data.tokenize.encode_example`).
        num_proc: Worker processes per rank; ``None``: the CPUs available per local rank.
        progress: Show a progress bar (rank 0, on a terminal).

    Returns:
        Per source, its cache and whether this call built it.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_hash = tokenizer_fingerprint(tokenizer_dir)
    jobs, job_of = [], []
    for source in sources:
        inputs = cache_key_inputs(source, tokenizer_hash, max_seq_length=max_seq_length, packing=packing,
                                  truncation=truncation)
        final = cache_path(cache_dir, source.name, inputs)
        known = [k for k, job in enumerate(jobs) if job.final == final]
        job_of.append(known[0] if known else len(jobs))
        if not known:
            jobs.append(Job(source, inputs, final))
    ranks = _Ranks(cache_dir)
    workers = resolve_num_proc(num_proc, ranks.local_ranks)
    settings = Settings(max_seq_length, packing, truncation, len(tokenizer))
    built = set()
    with ExitStack() as locks:
        if ranks.world == 1:  # separate processes (two runs, Lightning's local rank 0s) build each cache once
            for job in sorted(jobs, key=lambda j: str(j.final)):
                locks.enter_context(FileLock(str(job.final) + ".lock"))
        missing = [k for k, job in enumerate(jobs) if not (job.final / "meta.json").exists()]
        if any(ranks.gather(bool(missing))):
            _build_missing(jobs, missing, tokenizer, settings, ranks, workers, progress)
            built.update(missing)
    results = []
    for source, k in zip(sources, job_of):
        cache = CachedSource(jobs[k].final)
        check_strict(source, cache)
        results.append((cache, k in built))
    return results


def _build_missing(jobs: list[Job], missing: list[int], tokenizer, settings: Settings, ranks: _Ranks,
                   workers: int, progress: bool) -> None:
    """Count records, build this rank's shares, publish (see module docstring); every rank takes part."""
    for k in missing:
        jobs[k].work.mkdir(exist_ok=True)
    error = None
    shares: list[Share] = []
    with _pool(workers, tokenizer, jobs, settings) as imap:
        try:
            counts = _record_counts(jobs, missing, ranks, imap)
        except BaseException as err:  # every rank must reach the collectives below
            counts, error = {}, err
        ranks.raise_any(error)
        for k in missing:
            index = 0
            if jobs[k].source.max_records is not None:
                shares.append(Share(k, 0, "", 0, jobs[k].source.max_records))
                continue
            for file in map(str, jobs[k].source.files()):
                records, marks = counts[k, file]
                for start in range(0, records, SHARE_RECORDS):
                    shares.append(Share(k, index, file, start, min(start + SHARE_RECORDS, records),
                                        marks.get(start)))
                    index += 1
        todo = [s for s in shares if not s.base(jobs).with_suffix(".json").exists()]
        mine = todo[ranks.member::len(ranks.group_ranks)]
        ranks.barrier()  # every rank has listed the finished shares before any writes new ones
        try:
            with progress_bar(desc="preparing data", total=sum(s.stop - s.start for s in mine), unit="rec",
                              enabled=progress and ranks.rank == 0) as bar:
                started, tokens = time.perf_counter(), 0
                for records, share_tokens in imap(_build, mine):
                    tokens += share_tokens
                    bar.update(records)
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tok/s",
                                        refresh=False)
        except BaseException as err:
            error = err
        ranks.raise_any(error)
        try:
            if ranks.leader:
                for _ in imap(_publish, missing):
                    pass
        except BaseException as err:
            error = err
        ranks.raise_any(error)
    ranks.barrier()


def _record_counts(jobs: list[Job], missing: list[int], ranks: _Ranks, imap
                   ) -> dict[tuple[int, str], tuple[int, dict[int, Mark]]]:
    """Records and share marks per file of the missing jobs, from each job's ``index.json`` or scanned by the
    group's ranks (:func:`~panda.data.sources.scan_records`)."""
    counts: dict[tuple[int, str], tuple[int, dict[int, Mark]]] = {}
    tasks = []
    for k in missing:
        if jobs[k].source.field_template is not None:
            jobs[k].source.check_template_fields()  # a wrong template stops before any share is built
        if jobs[k].source.max_records is not None:
            continue
        index = jobs[k].work / "index.json"
        files = list(map(str, jobs[k].source.files()))
        if index.exists():
            counts.update({(k, f): (n, {int(p): tuple(m) for p, m in marks.items()})
                           for f, (n, marks) in json.loads(index.read_text(encoding="utf-8")).items()})
        else:
            tasks += [(k, f) for f in files]
    mine = tasks[ranks.member::len(ranks.group_ranks)]
    found = dict(zip(mine, imap(_count, mine)))
    for rank, other in enumerate(ranks.gather(found)):
        if rank in ranks.group_ranks:
            counts.update(other)
    if ranks.leader:
        for k in {k for k, _ in tasks}:
            index = {f: n for (j, f), n in counts.items() if j == k}
            _write_atomically(jobs[k].work / "index.json", lambda f, index=index: f.write(json.dumps(index).encode()))
    return counts


def build_source_cache(source: CorpusSource, tokenizer, tokenizer_dir: str | Path, cache_dir: str | Path, *,
                       max_seq_length: int, packing: bool = True, truncation: Truncation = "trim_prompt_start",
                       num_proc: int | None = 1) -> tuple[CachedSource, bool]:
    """One source's cache and whether it was built now (see :func:`prepare_sources`)."""
    return prepare_sources([source], tokenizer, tokenizer_dir, cache_dir, max_seq_length=max_seq_length,
                           packing=packing, truncation=truncation, num_proc=num_proc, progress=False)[0]
