"""Readers: exact examples for every format, loss policy and multi-turn mode; bad input named and counted."""

from __future__ import annotations

import gzip
import json
import logging
import pickle

import pytest
import torch

from panda.data.records import Example, Segment
from panda.data.report import BadRecordError, ReadReport
from panda.data.sources import CorpusSource


def write_json(path, value) -> str:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_lines(path, lines: list) -> str:
    """One JSON value per line; ``bytes`` items are written verbatim (for malformed lines)."""
    raw = b"".join((x if isinstance(x, bytes) else json.dumps(x, ensure_ascii=False).encode()) + b"\n"
                   for x in lines)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return str(path)


def ex(source: str, origin: str, *segments: tuple[str, bool], meta: dict | None = None) -> Example:
    return Example(tuple(Segment(t, tr) for t, tr in segments), source=source, origin=origin, meta=meta or {})


def read_all(source: CorpusSource, report: ReadReport | None = None) -> list[Example]:
    return list(source.read(report))


CONVERSATION = [
    {"inputs": "你好", "targets": "你好！有什么可以帮你？"},
    {"inputs": "今天天气怎么样？", "targets": "晴天。"},
    {"inputs": "谢谢", "targets": "不客气。"},
]


# ---- formats ---------------------------------------------------------------------------------------------------------


def test_coig_single_and_conversation(tmp_path):
    path = write_json(tmp_path / "coig.json", [{"inputs": "翻译：猫", "targets": "cat"}, CONVERSATION])
    examples = read_all(CorpusSource(name="coig", paths=path, format="coig"))
    assert examples == [
        ex("coig", f"{path}:[0]", ("翻译：猫", False), ("cat", True)),
        ex("coig", f"{path}:[1]",
           ("你好", False), ("你好！有什么可以帮你？", True),
           ("\n\n今天天气怎么样？", False), ("晴天。", True),
           ("\n\n谢谢", False), ("不客气。", True)),
    ]
    assert examples[1].meta == {"turns": 3}
    assert examples[1].text == "你好你好！有什么可以帮你？\n\n今天天气怎么样？晴天。\n\n谢谢不客气。"


def test_coig_panda_compat_reproduces_reference_flattening(tmp_path):
    path = write_json(tmp_path / "coig.json", [CONVERSATION, {"inputs": "单轮", "targets": "回答"}])
    examples = read_all(CorpusSource(name="coig", paths=path, format="coig", multi_turn="panda_compat"))
    origin = f"{path}:[0]"
    assert examples == [
        ex("coig", origin, ("\n\n你好", False), ("你好！有什么可以帮你？", True)),
        ex("coig", origin, ("你好\n\n你好！有什么可以帮你？\n\n今天天气怎么样？", False), ("晴天。", True)),
        ex("coig", origin, ("你好\n\n你好！有什么可以帮你？\n\n今天天气怎么样？\n\n晴天。\n\n谢谢", False),
           ("不客气。", True)),
        ex("coig", f"{path}:[1]", ("单轮", False), ("回答", True)),
    ]
    assert [e.meta for e in examples] == [{"turn": 0}, {"turn": 1}, {"turn": 2}, {}]
    report = ReadReport()
    read_all(CorpusSource(name="coig", paths=path, format="coig", multi_turn="panda_compat"), report)
    c = report.counts["coig"]
    assert (c.read, c.used, c.skipped, c.examples) == (2, 2, 0, 4)


def test_coig_full_loss_trains_every_token_with_eos_only_after_responses(tmp_path):
    path = write_json(tmp_path / "coig.json", [{"inputs": "问", "targets": "答"}, CONVERSATION[:2]])
    examples = read_all(CorpusSource(name="c", paths=path, format="coig", loss="full"))
    # each prompt joins the response after it: the tokenizer stage closes trained segments with EOS
    assert examples == [
        ex("c", f"{path}:[0]", ("问答", True)),
        ex("c", f"{path}:[1]", ("你好你好！有什么可以帮你？", True), ("\n\n今天天气怎么样？晴天。", True)),
    ]
    compat = read_all(CorpusSource(name="c", paths=path, format="coig", loss="full", multi_turn="panda_compat"))
    assert [e.segments for e in compat] == [
        (Segment("问答", True),),
        (Segment("\n\n你好你好！有什么可以帮你？", True),),
        (Segment("你好\n\n你好！有什么可以帮你？\n\n今天天气怎么样？晴天。", True),),
    ]


def test_wudao_full_by_default_and_conditional_override(tmp_path):
    path = write_json(tmp_path / "part.json", [
        {"title": "标题", "content": "正文 内容\n第二段", "dataType": "新闻", "id": 7},
        {"title": "", "content": "无标题正文"},
    ])
    assert read_all(CorpusSource(name="wudao", paths=path, format="wudao")) == [
        ex("wudao", f"{path}:[0]", ("标题 正文 内容\n第二段", True)),
        ex("wudao", f"{path}:[1]", ("无标题正文", True)),
    ]
    assert read_all(CorpusSource(name="wudao", paths=path, format="wudao", loss="conditional")) == [
        ex("wudao", f"{path}:[0]", ("标题 ", False), ("正文 内容\n第二段", True)),
        ex("wudao", f"{path}:[1]", ("无标题正文", True)),
    ]


def test_c4_gzip_json_lines(tmp_path):
    path = write_lines(tmp_path / "c4-train.00000-of-01024.json.gz", [
        {"text": "  Leading spaces kept.\n", "url": "http://x", "timestamp": "2019"},
        {"text": "第二条"},
    ])
    assert read_all(CorpusSource(name="c4", paths=path, format="c4")) == [
        ex("c4", f"{path}:1", ("  Leading spaces kept.\n", True)),
        ex("c4", f"{path}:2", ("第二条", True)),
    ]
    with pytest.raises(ValueError, match="no prompt to mask"):
        CorpusSource(name="c4", paths=path, format="c4", loss="conditional")


def test_jsonl_text_and_instruction_records(tmp_path):
    path = write_lines(tmp_path / "mix.jsonl", [
        {"text": "纯文本"},
        {"instruction": "分词：", "input": "我爱北京", "output": "我 爱 北京"},
        {"instruction": "写一首诗", "input": "", "output": "床前明月光"},
        {"instruction": "写一首诗", "output": "疑是地上霜"},
        {"input": "只有输入", "output": "输出"},
    ])
    expected = [
        ex("g", f"{path}:1", ("纯文本", True)),
        ex("g", f"{path}:2", ("分词： 我爱北京", False), ("我 爱 北京", True)),
        ex("g", f"{path}:3", ("写一首诗", False), ("床前明月光", True)),
        ex("g", f"{path}:4", ("写一首诗", False), ("疑是地上霜", True)),
        ex("g", f"{path}:5", ("只有输入", False), ("输出", True)),
    ]
    assert read_all(CorpusSource(name="g", paths=path, format="jsonl")) == expected
    full = read_all(CorpusSource(name="g", paths=path, format="jsonl", loss="full"))
    assert full[0] == expected[0]
    assert full[1] == ex("g", f"{path}:2", ("分词： 我爱北京我 爱 北京", True))


def test_jsonl_list_instruction_choice_is_seeded_per_record(tmp_path):
    choices = ["指令甲", "指令乙", "指令丙"]
    path = write_lines(tmp_path / "inst.jsonl", [{"instruction": choices, "output": f"答{i}"} for i in range(40)])

    def prompts(seed: int) -> list[str]:
        return [e.segments[0].text for e in read_all(CorpusSource("g", path, "jsonl", seed=seed))]

    first = prompts(0)
    assert set(first) == set(choices)  # every choice is used, not always the first
    assert prompts(0) == first  # deterministic across reads (and processes: the RNG key is a string)
    assert prompts(1) != first


def test_jsonl_format_reads_a_json_array_file(tmp_path):
    path = write_json(tmp_path / "alpaca.json", [{"instruction": "问", "input": "", "output": "答"}])
    assert read_all(CorpusSource(name="a", paths=path, format="jsonl")) == [
        ex("a", f"{path}:[0]", ("问", False), ("答", True)),
    ]


def test_array_or_lines_layout_is_detected_per_file(tmp_path):
    one_line_array = write_json(tmp_path / "one.json", [{"inputs": "问", "targets": "答"}, CONVERSATION[:1]])
    pretty_array = tmp_path / "pretty.json"
    pretty_array.write_text(json.dumps([{"inputs": "问", "targets": "答"}], ensure_ascii=False, indent=2))
    conversation_lines = write_lines(tmp_path / "lines.jsonl", [CONVERSATION[:1], {"inputs": "问", "targets": "答"}])
    source = CorpusSource(name="c", paths=[one_line_array, str(pretty_array), conversation_lines], format="coig")
    assert [e.origin for e in source.read()] == [
        f"{one_line_array}:[0]", f"{one_line_array}:[1]", f"{pretty_array}:[0]",
        f"{conversation_lines}:1", f"{conversation_lines}:2",
    ]
    assert [e.segments for e in source.read()][3] == (Segment("你好", False), Segment("你好！有什么可以帮你？", True))


def test_flan_inputs_targets(tmp_path):
    path = write_lines(tmp_path / "flan.jsonl", [{"inputs": "Q: 1+1?", "targets": "2", "task": "math"}])
    assert read_all(CorpusSource(name="flan", paths=path, format="flan")) == [
        ex("flan", f"{path}:1", ("Q: 1+1?", False), ("2", True)),
    ]


def test_chat_format_renders_prompts_and_conversations(tmp_path):
    path = write_json(tmp_path / "coig.json", [{"inputs": "问", "targets": "答"}, CONVERSATION[:2]])
    examples = read_all(CorpusSource(name="c", paths=path, format="coig", chat_format="roles", join=" "))
    assert examples == [
        ex("c", f"{path}:[0]", ("用户: 问\n助手:", False), (" 答", True)),
        ex("c", f"{path}:[1]", ("用户: 你好\n助手:", False), (" 你好！有什么可以帮你？", True),
           ("\n用户: 今天天气怎么样？\n助手:", False), (" 晴天。", True)),
    ]
    reference = read_all(CorpusSource(name="c", paths=path, format="coig", join=" "))
    assert reference[1].text == "你好 你好！有什么可以帮你？\n\n今天天气怎么样？ 晴天。"
    with pytest.raises(ValueError, match="chat format 'role' is not one of reference, roles .did you mean 'roles'"):
        CorpusSource(name="c", paths=path, format="coig", chat_format="role")


def test_text_is_never_rewritten(tmp_path):
    text = "\ufeff 前后空白\r\n\t和 emoji 🐼 "
    path = write_lines(tmp_path / "t.jsonl", [{"text": text}])
    assert read_all(CorpusSource(name="t", paths=path, format="jsonl"))[0].text == text


def test_utf8_bom_at_file_start_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "有BOM"}).encode() + b"\n")
    assert read_all(CorpusSource(name="t", paths=str(path), format="jsonl")) == [ex("t", f"{path}:1", ("有BOM", True))]


# ---- paths -----------------------------------------------------------------------------------------------------------


def test_files_from_file_glob_directory_and_lists(tmp_path):
    (tmp_path / "b").mkdir()
    a = write_lines(tmp_path / "a.jsonl", [{"text": "a"}])
    b = write_lines(tmp_path / "b" / "b.json", [{"text": "b"}])
    c = write_lines(tmp_path / "b" / "c.jsonl.gz", [{"text": "c"}])
    (tmp_path / "b" / "notes.txt").write_text("not a corpus file")
    src = CorpusSource(name="s", paths=str(tmp_path), format="jsonl")
    assert [str(p) for p in src.files()] == [a, b, c]
    assert [e.text for e in src.read()] == ["a", "b", "c"]
    report = ReadReport()
    assert [e.text for e in src.read_file(c, report)] == ["c"]  # one file at a time, e.g. per worker
    assert report.counts["s"].read == 1
    assert [str(p) for p in CorpusSource("s", str(tmp_path / "b" / "*.json*"), "jsonl").files()] == [b, c]
    assert [str(p) for p in CorpusSource("s", [c, str(tmp_path / "**" / "*.jsonl"), c], "jsonl").files()] == [c, a]
    assert [str(p) for p in CorpusSource("s", str(tmp_path), "c4").files()] == [c]


def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory .*nope.jsonl"):
        CorpusSource("s", str(tmp_path / "nope.jsonl"), "jsonl").files()
    with pytest.raises(FileNotFoundError, match="no file matches the glob"):
        CorpusSource("s", str(tmp_path / "*.jsonl"), "jsonl").files()
    with pytest.raises(FileNotFoundError, match=r"no \*\.json\.gz/\*\.jsonl\.gz file in the directory"):
        CorpusSource("s", str(tmp_path), "c4").files()


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="format 'csv'"):
        CorpusSource("s", "x", "csv")
    with pytest.raises(ValueError, match="weight must be"):
        CorpusSource("s", "x", "jsonl", weight=-1.0)
    with pytest.raises(ValueError, match="paths is empty"):
        CorpusSource("s", [], "jsonl")


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_bad_json_lines_are_named_skipped_and_counted(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        {"instruction": "好", "output": "行"},            # 1 ok
        b'{"instruction": "x", "output": ',              # 2 malformed JSON
        {"instruction": "x", "output": "   "},           # 3 empty output
        {"instruction": "x"},                            # 4 missing output
        {"instruction": "x", "output": 5},               # 5 wrong type
        b"",                                             # 6 blank: not a record
        b'{"text": "\xff\xfe broken"}',                  # 7 undecodable bytes
        {"instruction": ["a", 3], "output": "y"},        # 8 wrong type inside the list
        ["not", "an", "object"],                         # 9 wrong type
        {"title": "no text"},                            # 10 no usable key
        {"text": ""},                                    # 11 empty text
        {"instruction": None, "input": "x", "output": "y"},  # 12 wrong type
        {"text": "最后一条"},                               # 13 ok
    ])
    report = ReadReport()
    examples = read_all(CorpusSource(name="g", paths=path, format="jsonl"), report)
    assert [e.origin for e in examples] == [f"{path}:1", f"{path}:13"]
    assert [str(p) for p in report.problems] == [
        f"{path}:2: malformed JSON at column 31: Expecting value",
        f"{path}:3: 'output' is empty",
        f"{path}:4: missing 'output'; the record has ['instruction']",
        f"{path}:5: 'output' must be a string, got a number",
        f"{path}:7: undecodable bytes at column 11 (expected UTF-8 text)",
        f"{path}:8: 'instruction'[1] must be a non-empty string, got a number",
        f"{path}:9: expected a JSON object (jsonl record), got an array",
        f"{path}:10: expected a 'text' key or 'instruction'/'input'/'output' keys, found ['title']",
        f"{path}:11: 'text' is empty",
        f"{path}:12: 'instruction' must be a string, got null",
    ]
    c = report.counts["g"]
    assert (c.read, c.used, c.skipped) == (12, 2, 10)
    assert c.read == c.used + c.skipped


def test_bad_coig_records_and_turns(tmp_path):
    path = write_json(tmp_path / "coig.json", [
        {"inputs": "问", "targets": "答"},
        [],
        [{"inputs": "a", "targets": "b"}, {"inputs": "c"}],
        [{"inputs": "a", "targets": "b"}, "turn"],
        {"inputs": ["x"], "targets": "y"},
        "string",
    ])
    report = ReadReport()
    examples = read_all(CorpusSource(name="coig", paths=path, format="coig"), report)
    assert [e.origin for e in examples] == [f"{path}:[0]"]
    assert [str(p) for p in report.problems] == [
        f"{path}:[1]: empty conversation: an array with no turns",
        f"{path}:[2]: turn [1]: missing 'targets'; the record has ['inputs']",
        f"{path}:[3]: turn [1]: expected a JSON object (coig turn record), got a string",
        f"{path}:[4]: 'inputs' must be a string, got an array",
        f"{path}:[5]: expected a JSON object (coig record), got a string",
    ]
    assert report.summary().splitlines()[1].split() == ["coig", "6", "1", "5", "1"]


def test_bad_files(tmp_path):
    empty = tmp_path / "a_empty.jsonl"
    empty.write_bytes(b"\n  \n")
    empty_array = write_json(tmp_path / "b_empty.json", [])
    broken_array = tmp_path / "c_broken.json"
    broken_array.write_text('[\n  {"text": "ok"},\n  {"text": "x"\n', encoding="utf-8")
    undecodable_array = tmp_path / "d_undecodable.json"
    undecodable_array.write_bytes(b'[\n{"text": "ok"},\n{"text": "\xc3\x28"}\n]')
    truncated = tmp_path / "e_truncated.jsonl.gz"
    full = gzip.compress(b"".join(json.dumps({"text": f"line {i}" * 50}).encode() + b"\n" for i in range(200)))
    truncated.write_bytes(full[: len(full) // 2])
    report = ReadReport()
    examples = read_all(CorpusSource(name="t", paths=str(tmp_path), format="jsonl"), report)
    assert len(examples) > 0 and all(e.origin.startswith(f"{truncated}:") for e in examples)
    problems = [str(p) for p in report.problems]
    assert problems[:4] == [
        f"{empty}: empty file: no records",
        f"{empty_array}: empty file: the JSON array has no records",
        f"{broken_array}:4: malformed JSON array at column 1: Expecting ',' delimiter; the whole file is skipped",
        f"{undecodable_array}:3: undecodable bytes (expected UTF-8 text); the whole JSON array file is skipped",
    ]
    assert problems[4].startswith(f"{truncated}:{len(examples) + 1}: truncated or corrupt gzip stream")
    c = report.counts["t"]
    assert (c.read, c.used, c.skipped) == (len(examples) + 5, len(examples), 5)


def test_strict_raises_at_the_first_bad_record(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [{"text": "好"}, {"text": 3}, b"{oops"])
    report = ReadReport()
    source = CorpusSource(name="s", paths=path, format="jsonl", strict=True)
    seen = []
    with pytest.raises(BadRecordError, match=rf"source 's': bad record at {path}:2: 'text' must be a string") as info:
        for e in source.read(report):
            seen.append(e.text)
    assert seen == ["好"]
    assert info.value.problem.line_or_index == 2
    assert isinstance(info.value, ValueError)
    assert (report.counts["s"].read, report.counts["s"].skipped) == (2, 1)


def test_warnings_are_capped_but_counts_are_complete(tmp_path, caplog):
    path = write_lines(tmp_path / "w.jsonl", [{"text": ""}] * 5 + [{"text": "好"}])
    report = ReadReport(max_warnings=2)
    with caplog.at_level(logging.WARNING, logger="panda.data.report"):
        read_all(CorpusSource(name="w", paths=path, format="jsonl"), report)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"source 'w': skipped {path}:1: 'text' is empty",
        f"source 'w': skipped {path}:2: 'text' is empty",
        "further bad records are counted but not logged (ReadReport.max_warnings=2)",
    ]
    assert (report.counts["w"].read, report.counts["w"].used, report.counts["w"].skipped) == (6, 1, 5)
    assert len(report.problems) == 5


# ---- worker processes --------------------------------------------------------------------------------------------


class _SourceDataset(torch.utils.data.IterableDataset):
    def __init__(self, source: CorpusSource) -> None:
        self.source = source

    def __iter__(self):
        return (e.text for e in self.source.read())


def test_source_is_picklable_and_reads_in_dataloader_workers(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": f"第{i}条"} for i in range(3)])
    source = CorpusSource(name="p", paths=path, format="jsonl", weight=2.0)
    assert pickle.loads(pickle.dumps(source)) == source
    loader = torch.utils.data.DataLoader(_SourceDataset(source), batch_size=None, num_workers=1)
    assert list(loader) == ["第0条", "第1条", "第2条"]


def _tricky_jsonl(path, first=None) -> str:
    """JSON lines with what a share boundary must not miscount: blank and whitespace-only lines (an ideographic
    space too), malformed JSON, undecodable bytes, a BOM on line 1, records that fail the format."""
    lines = [b"\xef\xbb\xbf" + json.dumps({"text": "t0"}).encode()] if first is None else [first]
    for i in range(1, 23):
        lines.append({"text": f"t{i}"})
        if i % 4 == 0:
            lines += [b"", b"   ", "\u3000".encode()]
        if i % 5 == 0:
            lines.append(b'{"text": broken')
        if i % 7 == 0:
            lines.append(b'{"text": "\xff\xfe"}')
        if i % 9 == 0:
            lines.append({"no_text": 1})
    return write_lines(path, lines)


@pytest.mark.parametrize("name", ["tricky.jsonl", "tricky.jsonl.gz", "first_array.jsonl", "array.json"])
def test_reading_from_a_mark_equals_reading_from_the_top(tmp_path, name):
    from panda.data.sources import count_records, scan_records

    if name == "array.json":
        path = write_json(tmp_path / name, [{"text": f"t{i}"} for i in range(20)])
    elif name == "first_array.jsonl":  # JSON lines whose first record is a one-line array (a bad record here)
        path = _tricky_jsonl(tmp_path / name, first=b'["not", "an object"]')
    else:
        path = _tricky_jsonl(tmp_path / name)
    count, marks = scan_records(path, 3)
    assert count == count_records(path)
    if name == "array.json":
        assert marks == {}  # parsed whole: nothing to start from
        return
    assert sorted(marks) == list(range(3, count, 3)) and count > 25
    source = CorpusSource("s", path, "jsonl")
    for start in marks:
        for stop in (start + 3, count):
            plain, resumed = ReadReport(max_warnings=0), ReadReport(max_warnings=0)
            expected = list(source.read_file(path, plain, records=range(start, stop)))
            got = list(source.read_file(path, resumed, records=range(start, stop), mark=marks[start]))
            assert got == expected
            assert [str(p) for p in resumed.problems] == [str(p) for p in plain.problems]
            assert resumed.counts == plain.counts


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
def test_reading_from_a_mark_parses_only_the_records_asked_for(tmp_path, monkeypatch, name):
    import panda.data.sources as sources

    path = write_lines(tmp_path / name, [{"text": f"t{i}"} for i in range(100)])
    _, marks = sources.scan_records(path, 10)
    parsed = []

    class CountingJson:
        JSONDecodeError = json.JSONDecodeError

        @staticmethod
        def loads(text):
            parsed.append(text)
            return json.loads(text)

    monkeypatch.setattr(sources, "json", CountingJson)
    source = CorpusSource("s", path, "jsonl")
    got = [e.segments[0].text for e in source.read_file(path, records=range(90, 100), mark=marks[90])]
    assert got == [f"t{i}" for i in range(90, 100)] and len(parsed) == 10
