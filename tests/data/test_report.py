"""Bad-input report: problem locations, per-source counts, summary text, merging, strict errors."""

from __future__ import annotations

import pickle

from panda.data.report import BadRecordError, ReadReport, RecordProblem


def test_problem_locations_read_like_origins():
    assert str(RecordProblem("d/a.jsonl", 12, "'text' is empty")) == "d/a.jsonl:12: 'text' is empty"
    assert str(RecordProblem("d/coig.json", "[3]", "bad")) == "d/coig.json:[3]: bad"
    assert str(RecordProblem("d/e.jsonl", None, "empty file: no records")) == "d/e.jsonl: empty file: no records"


def test_counts_and_summary():
    report = ReadReport()
    for _ in range(3):
        report.record_used("coig", examples=2)
    report.record_problem("coig", RecordProblem("coig.json", "[1]", "'targets' is empty"))
    report.record_used("wudao")
    assert (report.read, report.used, report.skipped) == (5, 4, 1)
    assert report.summary() == "\n".join([
        "source      read      used   skipped  examples",
        "coig           4         3         1         6",
        "wudao          1         1         0         1",
        "total          5         4         1         7",
        "1 bad record skipped; first problems:",
        "  coig.json:[1]: 'targets' is empty",
    ])
    assert ReadReport().summary().endswith("no bad records")


def test_summary_lists_the_first_problems_and_counts_the_rest():
    report = ReadReport(max_warnings=2, max_kept=3)
    for line in range(1, 6):
        report.record_problem("g", RecordProblem("g.jsonl", line, "bad"))
    assert len(report.problems) == 3
    assert report.summary().splitlines()[-4:] == [
        "5 bad records skipped; first problems:",
        "  g.jsonl:1: bad",
        "  g.jsonl:2: bad",
        "  ... and 3 more",
    ]


def test_merge_adds_counts_from_worker_reports():
    a, b = ReadReport(), ReadReport()
    a.record_used("s")
    b.record_used("s", examples=3)
    b.record_problem("t", RecordProblem("t.jsonl", 2, "bad"))
    merged = a.merge(pickle.loads(pickle.dumps(b)))
    assert merged is a
    assert {k: (c.read, c.used, c.skipped, c.examples) for k, c in a.counts.items()} == {
        "s": (2, 2, 0, 4), "t": (1, 0, 1, 0),
    }
    assert a.problems == [RecordProblem("t.jsonl", 2, "bad")]


def test_bad_record_error_names_source_and_location_and_survives_pickling():
    err = BadRecordError(RecordProblem("x.jsonl", 7, "'output' is empty"), "sft")
    assert isinstance(err, ValueError)
    assert str(err) == ("source 'sft': bad record at x.jsonl:7: 'output' is empty "
                        "(strict mode; set strict: false to skip and count it)")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.problem == err.problem
