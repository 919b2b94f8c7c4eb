import json

from panda.generate.__main__ import main


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def test_generate_writes_every_good_line_and_names_the_bad_ones(tmp_path, model_dir, capsys):
    conversation = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                    {"role": "user", "content": "今天天气怎么样？"}]
    prompts = write_lines(tmp_path / "prompts.jsonl", [
        {"prompt": "人民日报", "id": 1},
        "{not json",
        {"messages": conversation, "id": 2},
        {"messages": [{"role": "robot", "content": "x"}]},
        "",
        {"prompt": "中国" * 600},
    ])
    out = tmp_path / "out.jsonl"
    args = [str(model_dir), "--input", str(prompts), "--output", str(out), "--max_new_tokens", "5",
            "--batch_size", "2"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{prompts}:2: malformed JSON at column 2" in err
    assert f"{prompts}:4: messages[0]: role 'robot' is not one of system, user, assistant" in err
    assert f"{prompts}:6: the prompt has" in err and "but the model's context is 512" in err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == [1, 2]
    assert rows[1]["messages"] == conversation
    for row in rows:
        assert row["output_tokens"] == 5 and row["stop_reason"] == "length" and row["prompt_tokens"] > 1
        assert isinstance(row["output"], str)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.jsonl", "prompts.jsonl"]  # no temporaries

    assert main(args) == 1  # an existing output is kept unless --overwrite
    assert "out.jsonl already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "true", "--temperature", "0.8", "--seed", "3"]) == 0
    assert main([str(tmp_path / "missing"), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_is_a_panda_command(tmp_path, model_dir, capsys):
    from panda.cli import COMMANDS

    assert COMMANDS["generate"] == "panda.generate.__main__:main" and COMMANDS["chat"] == "panda.generate.chat:main"
    assert main([str(model_dir), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "--input is required" in capsys.readouterr().err
