"""``python -m panda.data preview|stats``: read the training YAML layers, print rows and statistics."""

from __future__ import annotations

import json
import re

import pytest

from panda.constants import IGNORE_INDEX
from panda.data.__main__ import load_datamodule, main, marked_text
from tests.data.mixing_corpora import write_corpora


@pytest.fixture()
def configs(tmp_path, chinese_paragraphs, tokenizer_dir):
    """A training-style config (model + data) and an override layer, like ``--config base --config data``."""
    sources = write_corpora(tmp_path / "corpora", chinese_paragraphs, news=60, coig=20)
    base = tmp_path / "base.yaml"
    base.write_text(
        "model:\n  class_path: lightning.pytorch.demos.boring_classes.BoringModel\n"
        "data:\n  class_path: panda.data.PandaDataModule\n  init_args:\n"
        f"    tokenizer: {tokenizer_dir}\n    cache_dir: {tmp_path / 'cache'}\n    max_seq_length: 256\n"
        "    sources:\n"
        f"      - {{name: news, paths: {sources['news'].paths}, format: wudao}}\n", encoding="utf-8")
    layer = tmp_path / "sft.yaml"
    layer.write_text(
        "data:\n  init_args:\n    max_seq_length: 96\n    batch_size: 3\n    sources:\n"
        f"      - {{name: news, paths: {sources['news'].paths}, format: wudao}}\n"
        f"      - {{name: coig, paths: {sources['coig'].paths}, format: coig, weight: 2.0}}\n", encoding="utf-8")
    return base, layer


def test_config_layers_compose_like_fit(configs):
    base, layer = configs
    dm = load_datamodule(["--config", str(base), "--config", str(layer), "--data.init_args.seed", "5"])
    assert (dm.max_seq_length, dm.batch_size, dm.seed) == (96, 3, 5)
    assert [(s.name, s.weight) for s in dm.sources] == [("news", 1.0), ("coig", 2.0)]
    assert load_datamodule(["--config", str(base)]).max_seq_length == 256
    sized = load_datamodule(["--config", str(base), "--trainer.devices", "8", "--trainer.num_nodes", "2"])
    assert sized.world_size == 16  # preview/stats show rank 0 of the configured run
    fragment = base.parent / "fragment.yaml"  # a configs/data/*.yaml style fragment, given with --data
    fragment.write_text("class_path: panda.data.PandaDataModule\ninit_args:\n  batch_size: 7\n", encoding="utf-8")
    assert load_datamodule(["--config", str(base), "--data", str(fragment)]).batch_size == 7


def test_preview_prints_one_json_line_per_sequence(configs, capsys):
    base, layer = configs
    main(["preview", "--config", str(base), "--config", str(layer), "--num", "40"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 40
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 96
        assert row["position_ids"][0] == 0 and row["labels"][0] == IGNORE_INDEX
        assert row["text"].startswith("[[<s>")
        assert len(row["sources"]) == row["position_ids"].count(0)
    coig = [row for row in rows if "coig" in row["sources"]]
    news = [row for row in rows if row["sources"] == ["news"] * len(row["sources"])]
    assert coig and news
    for row in coig:  # every COIG prompt sits inside a masked span, its response outside
        for prompt in re.findall(r"\[\[(.*?)\]\]", row["text"], flags=re.S):
            assert prompt.startswith("<s>") or prompt.startswith("\n\n")
        assert re.search(r"\[\[<s> ?(给下面的段落写一个开头：|请复述：)", row["text"])
    assert news[0]["text"].count("[[") == len(news[0]["sources"])  # only the BOS of each document


def test_stats_prints_sources_mixture_and_useful_fraction(configs, capsys):
    base, layer = configs
    main(["stats", "--config", str(base), "--config", str(layer), "--trainer.accumulate_grad_batches", "2"])
    out = capsys.readouterr().out
    batches = int(out.split("batches per epoch per device: ")[1].split()[0])
    assert f"optimizer steps per epoch: {-(-batches // 2)} (accumulate_grad_batches 2)" in out
    assert "source" in out and "loss_tok" in out and "trunc" in out
    mixture = [line.split() for line in out.splitlines() if line.startswith(("news ", "coig "))]
    realized = {cells[0]: (float(cells[-3]), float(cells[-2])) for cells in mixture if len(cells) == 8}
    assert set(realized) == {"news", "coig"}
    assert all(abs(target - real) < 1.0 for target, real in realized.values())  # percent
    fraction = float(out.split("useful-token fraction: ")[1].split()[0])
    assert 0.8 < fraction <= 1.0  # short windows (96) pack less tightly than 2048


def test_marked_text_wraps_unlearned_spans(tokenizer):
    prompt = tokenizer("问题", add_special_tokens=False)["input_ids"]
    answer = tokenizer.convert_tokens_to_ids(["回答"]) if "回答" in tokenizer.get_vocab() else [900]
    ids = [1, *prompt, *answer, 2]
    labels = [IGNORE_INDEX] * (1 + len(prompt)) + [*answer, 2]
    text = marked_text(tokenizer, ids, labels)
    assert text == f"[[{tokenizer.decode([1, *prompt])}]]{tokenizer.decode([*answer, 2])}"
    assert text.startswith("[[<s>") and text.endswith("</s>")


def test_missing_config_and_unknown_tool_are_one_line_errors(capsys):
    assert main(["stats"]) == 2
    assert capsys.readouterr().err.strip() == ("panda data: error: panda data stats needs --config FILE (the YAML "
                                               "layers of the training run)")
    assert main(["stast", "--config", "x.yaml"]) == 2
    assert "unknown data tool 'stast' (did you mean 'stats'?)" in capsys.readouterr().err


def test_each_tool_has_help_with_its_own_and_the_training_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["preview", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--num NUM" in out
    assert "--config" in out and "--trainer" in out


def test_preview_text_keeps_the_leading_space_of_a_trained_span(tokenizer):
    from panda.data.records import Example, Segment
    from panda.data.tokenize import encode_example

    example = Example((Segment("问题：1+1=", False), Segment(" 2", True)), source="flan")
    sequence = encode_example(example, tokenizer, 64).sequences[0]
    text = marked_text(tokenizer, sequence.input_ids, sequence.labels)
    assert text.endswith("]] 2</s>")  # what is trained is " 2", not "2"
    assert text.replace("[[", "").replace("]]", "") == tokenizer.decode(sequence.input_ids)


def test_stats_prints_the_source_table_once(configs, capsys, caplog):
    base, layer = configs
    main(["stats", "--config", str(base), "--config", str(layer)])
    captured = capsys.readouterr()
    assert (captured.out + captured.err + caplog.text).count("loss_tok") == 1


def test_prepare_builds_every_cache_ahead_of_a_launch(configs, capsys, tmp_path):
    base, layer = configs
    assert main(["prepare", "--config", str(base), "--config", str(layer), "--data.init_args.num_proc", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("source") and "news" in out and "coig" in out
    published = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").exists()]
    assert sorted(p.name.split("-")[0] for p in published) == ["coig", "news"]
    assert main(["prepare", "--config", str(base), "--data.init_args.num_proc", "4096"]) == 1
    assert "data.num_proc 4096 is more than the" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_under_torchrun_builds_one_cache_with_both_ranks(configs, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    base, layer = configs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    ranks = []
    for rank in range(2):  # the environment torchrun gives each rank
        env = {**os.environ, "PYTHONPATH": str(root), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, "-m", "panda.data", "prepare", "--config", str(base),
                                       "--config", str(layer), "--data.init_args.num_proc", "1"], cwd=root, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert "coig" in outputs[0][0] and outputs[1][0] == ""  # rank 0 prints the table
    published = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").exists()]
    assert sorted(p.name.split("-")[0] for p in published) == ["coig", "news"]
