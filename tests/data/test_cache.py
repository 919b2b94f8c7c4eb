"""The tokenize-once cache: hits, keys, exact contents, memory mapping, concurrent builders, failed builds."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest
from datasets.table import MemoryMappedTable

from panda.constants import IGNORE_INDEX
from panda.data.cache import CachedSource, compact_batch, labels_from_spans, sequence_schema
from panda.data.prepare import build_source_cache
from panda.data.report import BadRecordError
from panda.data.tokenize import encode_example
from tests.data.mixing_corpora import write_corpora

MAX_LEN = 128


@pytest.fixture()
def sources(tmp_path, chinese_paragraphs):
    return write_corpora(tmp_path / "corpora", chinese_paragraphs, news=80, coig=24)


def build(source, tokenizer, tokenizer_dir, cache_dir, **kwargs):
    kwargs.setdefault("max_seq_length", MAX_LEN)
    return build_source_cache(source, tokenizer, tokenizer_dir, cache_dir, **kwargs)


def test_second_build_is_a_cache_hit(sources, tokenizer, tokenizer_dir, tmp_path):
    first, built = build(sources["news"], tokenizer, tokenizer_dir, tmp_path / "cache")
    assert built
    second, built_again = build(dataclasses.replace(sources["news"], weight=5.0, strict=True), tokenizer,
                                tokenizer_dir, tmp_path / "cache")
    assert not built_again  # weight and strictness do not change the cached sequences
    assert second.path == first.path
    assert np.array_equal(second.row_items, first.row_items)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [first.path.name]


def test_key_changes_with_files_settings_and_tokenizer(sources, tokenizer, tokenizer_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    base, _ = build(sources["coig"], tokenizer, tokenizer_dir, cache_dir)
    assert build(sources["coig"], tokenizer, tokenizer_dir, cache_dir, max_seq_length=64)[1]
    assert build(sources["coig"], tokenizer, tokenizer_dir, cache_dir, packing=False)[1]
    assert build(dataclasses.replace(sources["coig"], multi_turn="panda_compat"), tokenizer, tokenizer_dir,
                 cache_dir)[1]
    other_tokenizer = shutil.copytree(tokenizer_dir, tmp_path / "tokenizer_copy")
    config = other_tokenizer / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    assert build(sources["coig"], tokenizer, other_tokenizer, cache_dir)[1]
    path = base.meta["key_inputs"]["files"][0][0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(" ")
    rebuilt, built = build(sources["coig"], tokenizer, tokenizer_dir, cache_dir)
    assert built and rebuilt.path != base.path


def test_rows_hold_exactly_the_encoded_sequences(sources, tokenizer, tokenizer_dir, tmp_path):
    cache, _ = build(sources["coig"], tokenizer, tokenizer_dir, tmp_path / "cache")
    expected = [seq for example in sources["coig"].read()
                for seq in encode_example(example, tokenizer, MAX_LEN).sequences]
    assert len(cache.lengths) == len(expected)
    assert sorted(np.asarray(cache.row_items).tolist()) == list(range(len(expected)))  # each sequence once
    seen = {}
    for r in range(cache.num_rows):
        row = cache.row(r)
        assert sum(len(ids) for ids, _ in row) <= MAX_LEN
        items = cache.row_items[cache.row_offsets[r]:cache.row_offsets[r + 1]]
        for item, (ids, labels) in zip(items, row):
            seen[int(item)] = (ids.tolist(), labels.tolist())
    assert [seen[i] for i in range(len(expected))] == [(s.input_ids, s.labels) for s in expected]
    assert cache.row_lengths().sum() == sum(len(s.input_ids) for s in expected)
    assert cache.meta["encoding"]["sequences"] == len(expected)
    assert cache.meta["read"] == cache.meta["used"] + cache.meta["skipped"]


def test_cache_is_memory_mapped_and_pickles_by_path(sources, tokenizer, tokenizer_dir, tmp_path):
    cache, _ = build(sources["news"], tokenizer, tokenizer_dir, tmp_path / "cache")
    assert isinstance(cache.sequences.data, MemoryMappedTable)
    assert isinstance(cache.row_items, np.memmap)
    blob = pickle.dumps(cache)
    assert len(blob) < 1000  # a path, not the arrays
    clone = pickle.loads(blob)
    assert [ids.tolist() for ids, _ in clone.row(3)] == [ids.tolist() for ids, _ in cache.row(3)]


def _build_in_process(args):
    source, tokenizer_dir, cache_dir = args
    from panda.data.tokenizer import load_tokenizer

    return build(source, load_tokenizer(tokenizer_dir), tokenizer_dir, cache_dir)[1]


def test_concurrent_builders_build_once(sources, tokenizer_dir, tmp_path):
    args = (sources["news"], tokenizer_dir, tmp_path / "cache")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        built = pool.map(_build_in_process, [args, args])
    assert sorted(built) == [False, True]


def test_failed_build_leaves_no_cache(sources, tokenizer, tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"inputs": "问", "targets": "答"}, {"inputs": "问", "targets": ""}]),
                   encoding="utf-8")
    strict = dataclasses.replace(sources["coig"], paths=str(bad), strict=True)
    with pytest.raises(BadRecordError, match=r"bad\.json:\[1\]"):
        build(strict, tokenizer, tokenizer_dir, tmp_path / "cache")
    published = [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".lock", ".shares"))]
    assert published == []  # finished shares may stay for a resume; no cache is published
    lenient, _ = build(dataclasses.replace(strict, strict=False), tokenizer, tokenizer_dir, tmp_path / "cache")
    assert (lenient.meta["read"], lenient.meta["used"], lenient.meta["skipped"]) == (2, 1, 1)
    assert lenient.meta["problems"] == [f"{bad}:[1]: 'targets' is empty"]
    assert isinstance(CachedSource(lenient.path).meta, dict)


def test_strict_stops_at_the_first_bad_record_of_a_cached_source(tokenizer, tokenizer_dir, tmp_path, sources):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"inputs": "问", "targets": "答"}, {"inputs": "问", "targets": ""},
                               {"inputs": "问", "targets": ""}]), encoding="utf-8")
    lenient = dataclasses.replace(sources["coig"], paths=str(bad))
    cached, built = build(lenient, tokenizer, tokenizer_dir, tmp_path / "cache")
    assert built and cached.meta["skipped"] == 2
    with pytest.raises(BadRecordError, match=r"bad\.json:\[1\]: 'targets' is empty"):
        build(dataclasses.replace(lenient, strict=True), tokenizer, tokenizer_dir, tmp_path / "cache")


@pytest.mark.parametrize("vocab_size, max_len, id_type", [(4000, 128, "uint16"), (70_000, 70_000, "int32")])
def test_compact_batch_round_trips_ids_and_labels_exactly(vocab_size, max_len, id_type):
    rng = np.random.default_rng(0)
    sequences = []
    for length in (1, 2, 5, 17, 64):
        for pattern in ("none", "all", "random", "ends"):
            ids = rng.integers(0, vocab_size, size=length)
            trained = {"none": np.zeros(length, bool), "all": np.ones(length, bool),
                       "random": rng.random(length) < 0.5,
                       "ends": np.isin(np.arange(length), [0, length - 1])}[pattern]
            sequences.append((ids.tolist(), np.where(trained, ids, IGNORE_INDEX).tolist()))
    schema = sequence_schema(vocab_size, max_len)
    batch = compact_batch([s[0] for s in sequences], [s[1] for s in sequences], schema)
    assert str(batch.schema.field("input_ids").type.value_type) == id_type
    ids_column, spans_column = batch.column(0), batch.column(1)
    for k, (ids, labels) in enumerate(sequences):
        got_ids = ids_column[k].values.to_numpy().astype(np.int64)
        assert got_ids.tolist() == ids
        assert labels_from_spans(got_ids, spans_column[k].values.to_numpy()).tolist() == labels


def test_compact_batch_refuses_a_label_it_cannot_store():
    with pytest.raises(ValueError, match="neither its position's token nor IGNORE_INDEX"):
        compact_batch([[1, 5, 6]], [[IGNORE_INDEX, 5, 7]], sequence_schema(100, 8))


def test_compact_cache_is_over_three_times_smaller_than_two_int32_columns(sources, tokenizer, tokenizer_dir,
                                                                          tmp_path):
    cache, _ = build(sources["news"], tokenizer, tokenizer_dir, tmp_path / "cache")
    sequences = [cache.sequence(i) for i in range(len(cache.lengths))]
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    wide = tmp_path / "int32.arrow"
    with pa.OSFile(str(wide), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch([pa.array([s[0].tolist() for s in sequences], pa.list_(pa.int32())),
                                            pa.array([s[1].tolist() for s in sequences], pa.list_(pa.int32()))],
                                           schema=schema))
    assert wide.stat().st_size / (cache.path / "sequences.arrow").stat().st_size >= 3.0


def test_tokenizer_fingerprint_reads_only_tokenizer_files(stock_llama_dir, tmp_path):
    """Stock layout: the tokenizer sits in the model directory; its weights are neither hashed nor part of the key."""
    import shutil

    from panda.data.cache import tokenizer_fingerprint

    copy = shutil.copytree(stock_llama_dir, tmp_path / "model")
    before = tokenizer_fingerprint(copy)
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert tokenizer_fingerprint(copy) == before
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length": 2048', '"model_max_length": 1024'))
    assert tokenizer_fingerprint(copy) != before
