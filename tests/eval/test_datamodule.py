import json

import pytest

from panda.errors import UserError
from panda.eval.datamodule import BenchmarkDataModule
from panda.eval.prompts import ANSWER_CUE, INSTRUCTION


def test_batches_are_prompted_questions_and_bad_records_are_counted(tmp_path, logiqa_file):
    path = tmp_path / "with_bad.jsonl"
    path.write_text(logiqa_file.read_text(encoding="utf-8") + json.dumps({"text": "t"}) + "\n", encoding="utf-8")
    data = BenchmarkDataModule(str(path), "logiqa_v2", batch_size=2, sort_by_length=False)
    with pytest.warns(UserWarning, match=r"with_bad.jsonl:4: key 'question' must be a string"):
        data.setup("validate")
    assert data.name == "with_bad" and len(data.report.problems) == 1
    batches = list(data.val_dataloader())
    assert [len(b) for b in batches] == [2, 1] and [len(b) for b in data.test_dataloader()] == [2, 1]
    first = batches[0][0]
    assert set(first) == {"index", "origin", "options", "label", "prompt"}
    assert first["prompt"].startswith(INSTRUCTION) and first["prompt"].endswith(ANSWER_CUE)
    assert first["options"] == ["企鹅会飞", "企鹅不会飞", "有的鸟不会飞", "无法判断"] and first["label"] == 0


def test_limit_shots_and_missing_inputs(tmp_path, c3_file):
    data = BenchmarkDataModule(str(c3_file), "c3", name="c3_d", shots=1, train_path=str(c3_file), limit=2)
    data.setup("validate")
    assert sorted(q["index"] for q in data.questions) == [0, 1]
    everything = BenchmarkDataModule(str(c3_file), "c3")
    everything.setup("validate")
    lengths = [len(q["prompt"]) + sum(map(len, q["options"])) for q in everything.questions]
    assert lengths == sorted(lengths, reverse=True) and [q["index"] for q in everything.questions] == [2, 0, 1]
    assert all(q["prompt"].count("答案是 ") == 1 for q in data.questions)
    with pytest.raises(ValueError, match="shots=2 needs train_path"):
        BenchmarkDataModule(str(c3_file), "c3", shots=2).setup("validate")
    with pytest.raises(ValueError, match="--data.init_args.path"):
        BenchmarkDataModule(None, "c3").setup("validate")


@pytest.mark.filterwarnings("ignore:.*bad records skipped")
def test_a_file_without_any_readable_question_is_an_error(c3_file):
    with pytest.raises(UserError, match=r"no question could be read as format 'logiqa_v2'; first problem: .*c3.json:1"):
        BenchmarkDataModule(str(c3_file), "logiqa_v2").setup("validate")
