"""C-Eval, CMMLU and AGIEval-zh read from fixtures in their published formats, with their own prompts."""

import csv
import json

import pytest

from panda.errors import UserError
from panda.eval.benchmarks import BenchmarkReport
from panda.eval.datamodule import BenchmarkDataModule
from panda.eval.exams import prepare_exam

CEVAL_HEADER = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def ceval_dir(tmp_path):
    """``ceval-exam`` layout: dev/ (5 solved questions per subject, with explanations) and val/."""
    root = tmp_path / "ceval"
    dev = [[i, f"开发题{i}：1+{i}=____", str(i), str(i + 1), str(i + 2), str(i + 3), "B", "1.解析"] for i in range(5)]
    write_csv(root / "dev" / "computer_network_dev.csv", CEVAL_HEADER, dev)
    write_csv(root / "dev" / "logic_dev.csv", CEVAL_HEADER, dev[:2])
    write_csv(root / "val" / "computer_network_val.csv", CEVAL_HEADER[:7], [
        [0, "对于UDP协议，如果想实现可靠传输，应在哪一层实现____", "数据链路层", "网络层", "传输层", "应用层", "D"],
        [1, "多行\n题目____", "甲", "乙", "丙", "丁", "A"],
        [2, "答案越界____", "甲", "乙", "丙", "丁", "E"],
        [3, "缺选项____", "甲", "", "丙", "丁", "C"],
        [4, "最后一题____", "甲", "乙", "丙", "丁", "C"],
    ])
    write_csv(root / "val" / "logic_val.csv", CEVAL_HEADER[:7], [[0, "逻辑题____", "对", "错", "都对", "都错", "B"]])
    write_csv(root / "val" / "broken_val.csv", ["id", "question", "A", "B", "C", "D"], [[0, "q", "a", "b", "c", "d"]])
    return root


def test_ceval_zero_shot_prompt_rows_subjects_and_bad_rows(ceval_dir):
    report = BenchmarkReport(str(ceval_dir / "val"))
    questions = prepare_exam(ceval_dir / "val", "ceval", report=report)
    assert [(q["index"], q["subject"], q["label"]) for q in questions] == [
        (0, "computer_network", 3), (1, "computer_network", 0), (2, "computer_network", 2), (3, "logic", 1)]
    assert questions[0]["prompt"] == ("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
                                      "对于UDP协议，如果想实现可靠传输，应在哪一层实现____\nA. 数据链路层\nB. 网络层\n"
                                      "C. 传输层\nD. 应用层\n答案：")
    assert questions[1]["origin"].endswith("computer_network_val.csv:3")  # the multi-line question starts there
    val = ceval_dir / "val"
    assert [str(p) for p in report.problems] == [
        f"{val}/broken_val.csv:1: missing column(s) answer; a ceval file has the columns question,A,B,C,D,answer "
        "(header: id,question,A,B,C,D)",
        f"{val}/computer_network_val.csv:5: answer 'E' is not one of the option letters A, B, C, D",
        f"{val}/computer_network_val.csv:6: empty cell(s) B",
    ]
    assert report.questions == 4 and report.skipped == 3


def test_ceval_k_shot_takes_the_subjects_first_dev_questions_and_too_few_is_one_line(ceval_dir):
    questions = prepare_exam(ceval_dir / "val" / "computer_network_val.csv", "ceval", shots=2,
                             train_path=ceval_dir / "dev")
    assert questions[0]["prompt"].startswith(
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
        "开发题0：1+0=____\nA. 0\nB. 1\nC. 2\nD. 3\n答案：B\n\n"
        "开发题1：1+1=____\nA. 1\nB. 2\nC. 3\nD. 4\n答案：B\n\n对于UDP协议")
    with pytest.raises(UserError, match=r"logic_dev.csv: 5-shot prompts need 5 dev questions for subject 'logic', "
                                        r"the file has 2 readable$"):
        prepare_exam(ceval_dir / "val" / "logic_val.csv", "ceval", shots=5, train_path=ceval_dir / "dev")


def test_cmmlu_prompt_with_its_index_column(tmp_path):
    write_csv(tmp_path / "dev" / "agronomy.csv", CMMLU_HEADER, [[0, "示例题", "甲", "乙", "丙", "丁", "C"]])
    test = write_csv(tmp_path / "test" / "agronomy.csv", CMMLU_HEADER, [
        [0, "在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是", "农业生产工具", "土地",
         "劳动力", "资金", "B"],
        [1, "坏题", "甲", "乙", "丙", "丁", "b"]])
    report = BenchmarkReport(str(test))
    [question] = prepare_exam(tmp_path / "test", "cmmlu", shots=1, train_path=tmp_path / "dev", report=report)
    assert question["prompt"] == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                                  "题目：示例题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：C\n\n"
                                  "题目：在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是\n"
                                  "A. 农业生产工具\nB. 土地\nC. 劳动力\nD. 资金\n答案是：")
    assert question["label"] == 1 and question["subject"] == "agronomy"
    assert str(report.problems[0]) == f"{test}:3: answer 'b' is not one of the option letters A, B, C, D"


def test_agieval_chinese_sets_zero_shot_prompt_and_multi_answer_skipped(tmp_path):
    rows = [{"passage": "所有的鸟都会飞。", "question": "由此可以推出：", "options": ["(A)企鹅会飞", "(B)企鹅不会飞",
             "(C)无法判断", "(D)都不对"], "label": "A", "other": None},
            {"passage": None, "question": "多选题", "options": ["(A)甲", "(B)乙", "(C)丙", "(D)丁"], "label": ["A", "B"]}]
    (tmp_path / "logiqa-zh.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    (tmp_path / "lsat-ar.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")  # English: not taken
    report = BenchmarkReport(str(tmp_path))
    [question] = prepare_exam(tmp_path, "agieval", report=report)
    assert question["prompt"] == ("所有的鸟都会飞。问题：由此可以推出： 选项：(A)企鹅会飞 (B)企鹅不会飞 (C)无法判断 (D)都不对\n"
                                  "答案：从A到D, 我们应选择")
    assert question["options"] == ["企鹅会飞", "企鹅不会飞", "无法判断", "都不对"] and question["subject"] == "logiqa-zh"
    assert "multi-answer label ['A', 'B']" in str(report.problems[0]) and report.problems[0].location == "2"
    with pytest.raises(UserError, match="only zero-shot"):
        prepare_exam(tmp_path, "agieval", shots=1, train_path=tmp_path)


def test_exam_suite_evaluates_per_subject_and_averaged(tmp_path, ceval_dir, tiny_model_dir):
    from panda.eval import evaluate
    from panda.eval.table import find_runs, markdown_tables

    with pytest.warns(UserWarning, match="3 bad records skipped"):
        metrics = evaluate(str(tiny_model_dir), str(ceval_dir / "val"), "ceval", "both", name="ceval",
                           max_new_tokens=2, continuation="letter", output_dir=str(tmp_path / "runs"), label="tiny")
    assert metrics["count"] == 4 and metrics["skipped_records"] == 3
    assert set(metrics["subjects"]) == {"computer_network", "logic"}
    network, logic = metrics["subjects"]["computer_network"], metrics["subjects"]["logic"]
    assert network["count"] == 3 and logic["count"] == 1
    for name in ("loglik/acc", "generate/acc"):
        assert metrics[f"subject_mean/{name}"] == pytest.approx((network[name] + logic[name]) / 2)
        assert metrics[name] == pytest.approx((3 * network[name] + logic[name]) / 4)
    text = markdown_tables(find_runs([tmp_path / "runs"]), ["loglik/acc", "subject_mean/loglik/acc"], subjects=True)
    assert "| subject_mean/loglik/acc (%) | C-Eval |" in text and "| C-Eval loglik/acc (%) | tiny |" in text
    assert "| logic | " in text


def test_exam_format_in_the_data_module(ceval_dir):
    data = BenchmarkDataModule(str(ceval_dir / "val" / "logic_val.csv"), "ceval", shots=1,
                               train_path=str(ceval_dir / "dev"))
    data.setup("validate")
    assert data.questions[0]["prompt"].count("答案：") == 2 and data.questions[0]["subject"] == "logic"
