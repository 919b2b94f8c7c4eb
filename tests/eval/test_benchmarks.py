import json

import pytest

from panda.eval.benchmarks import BadBenchmarkRecordError, BenchmarkReport, Question, read_benchmark


def test_c3_one_question_per_element_question_and_label_from_answer_text(c3_file):
    questions = read_benchmark(c3_file, "c3")
    assert [q.index for q in questions] == [0, 1, 2]
    assert questions[0] == Question(0, "男：你好，今天天气怎么样？ 女：很好，我们去公园吧。", "他们要去哪里？",
                                    ("公园", "学校", "商店"), 0, f"{c3_file}:[0].questions[0]")
    assert questions[1].options == ("很好", "不好") and questions[1].origin.endswith("[0].questions[1]")
    assert questions[2].label == 1 and questions[2].gold_letter == "B"


def test_logiqa_v2_json_lines(logiqa_file):
    questions = read_benchmark(logiqa_file, "logiqa_v2")
    assert [(q.label, q.origin) for q in questions] == [(0, f"{logiqa_file}:1"), (1, f"{logiqa_file}:2"),
                                                        (2, f"{logiqa_file}:3")]
    assert questions[2].context == "甲比乙高，乙比丙高。" and questions[2].options[2] == "丙"


def test_generic_multiple_choice_accepts_index_or_letter_and_optional_context(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "1+1=?", "options": ["1", "2"], "answer": 1}\n\n'
                    '{"context": "天", "question": "q", "options": ["x", "y", "z"], "answer": "C"}\n',
                    encoding="utf-8")
    questions = read_benchmark(path, "multiple_choice")
    assert [(q.context, q.label, q.origin) for q in questions] == [("", 1, f"{path}:1"), ("天", 2, f"{path}:3")]


def test_bad_records_are_reported_with_line_and_reason_then_strict_raises(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"text": "t", "question": "q", "options": ["a", "b"], "answer": 1}
    lines = [good, {**good, "answer": 2}, "not json", {**good, "options": "ab"}, good]
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
                    encoding="utf-8")
    report = BenchmarkReport(str(path))
    questions = read_benchmark(path, "logiqa_v2", report=report)
    assert [q.origin for q in questions] == [f"{path}:1", f"{path}:5"]
    assert [(p.location, p.reason.split()[0]) for p in report.problems] == [("2", "key"), ("3", "invalid"),
                                                                           ("4", "key")]
    assert "integer in [0, 2)" in report.problems[0].reason
    assert "2 questions, 3 bad records" in report.summary()
    with pytest.raises(BadBenchmarkRecordError, match=r"bad.jsonl:2: key 'answer'"):
        read_benchmark(path, "logiqa_v2", strict=True)


def test_c3_answer_not_among_choices_is_kept_scored_wrong_and_reported(tmp_path):
    """DreamReader left such a label at -1 (letter E, never extracted): the question counts, as wrong."""
    path = tmp_path / "c3.json"
    path.write_text(json.dumps([[["x"], [{"question": "q", "choice": ["a", "b"], "answer": "c"}], "id"],
                                [["y"], [{"question": "q", "choice": ["a", "b"], "answer": "b"}], "id2"]]),
                    encoding="utf-8")
    report = BenchmarkReport(str(path))
    questions = read_benchmark(path, "c3", report=report)
    assert [(q.context, q.label, q.gold_letter) for q in questions] == [("x", -1, None), ("y", 1, "B")]
    assert str(report.problems[0]) == (f"{path}:[0]: questions[0].answer 'c' is not one of its choices "
                                       "(kept, scored wrong)")
    assert report.skipped == 0 and "1 kept and scored wrong" in report.summary()
    assert len(read_benchmark(path, "c3", strict=True)) == 2  # not a bad record: strict keeps it too


def test_c3_gold_is_the_last_choice_equal_to_the_answer(tmp_path):
    path = tmp_path / "c3.json"
    path.write_text(json.dumps([[["x"], [{"question": "q", "choice": ["是", "否", "是", "不知道"], "answer": "是"}],
                                 "id"]], ensure_ascii=False), encoding="utf-8")
    [question] = read_benchmark(path, "c3")
    assert question.label == 2 and question.gold_letter == "C"


def test_c3_a_bad_question_never_drops_the_other_questions_of_its_document(tmp_path):
    path = tmp_path / "c3.json"
    path.write_text(json.dumps([[["x"], [{"question": "q1", "choice": ["a", "b"], "answer": "a"},
                                         {"question": 7, "choice": ["a", "b"], "answer": "a"},
                                         {"question": "q3", "choice": "ab", "answer": "a"},
                                         {"question": "q4", "choice": ["a", "b"], "answer": "b"}], "id"]]),
                    encoding="utf-8")
    report = BenchmarkReport(str(path))
    questions = read_benchmark(path, "c3", report=report)
    assert [(q.question, q.index, q.origin.rsplit(":", 1)[1]) for q in questions] == [
        ("q1", 0, "[0].questions[0]"), ("q4", 1, "[0].questions[3]")]
    assert [p.reason.split()[0] for p in report.problems] == ["questions[1]", "questions[2].choice"]
    assert report.skipped == 2


def test_missing_file_and_unknown_format(tmp_path, c3_file):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_benchmark(tmp_path / "nope.json", "c3")
    with pytest.raises(ValueError, match="unknown benchmark format"):
        read_benchmark(c3_file, "csv")
