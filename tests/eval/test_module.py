"""End to end: ``lightning_main.py validate --config configs/eval/*.yaml`` on a tiny saved model, and ``evaluate()``."""

import json
from pathlib import Path

import pytest

from panda.cli import lightning
from panda.eval.generation import extract_answer
from panda.eval.prompts import build_prompt

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments sit in sys.argv beside ``args``."""
    monkeypatch.setattr("sys.argv", ["lightning_main.py"])


def read_run(run_dir: Path):
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return metrics, records


def recomputed(records):
    """The metrics again, from the written records alone (no model)."""
    n = len(records)
    return {
        "generate/acc": sum(extract_answer(r["generate"]["generated"]) == r["gold"] for r in records) / n,
        "generate/unparseable_rate": sum(extract_answer(r["generate"]["generated"]) is None for r in records) / n,
        "loglik/acc": sum("ABCD"[max(range(len(o := r["loglik"]["options"])), key=lambda i: o[i]["logprob"])]
                          == r["gold"] for r in records) / n,
        "loglik/acc_norm": sum("ABCD"[max(range(len(o := r["loglik"]["options"])),
                                          key=lambda i: o[i]["logprob"] / len(o[i]["continuation"]))]
                               == r["gold"] for r in records) / n,
    }


def test_cli_validate_on_a_hugging_face_directory_writes_outputs(tmp_path, tiny_model_dir, c3_file):
    lightning(["validate", "--config", str(CONFIGS / "c3_d.yaml"), "--model.init_args.model", str(tiny_model_dir),
          "--data.init_args.path", str(c3_file), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.enable_progress_bar", "false", "--model.init_args.max_new_tokens", "8"])
    run_dir = tmp_path / "runs" / "c3_d" / "version_0"
    metrics, records = read_run(run_dir)
    assert metrics["benchmark"] == "c3_d" and metrics["model"] == "tiny-llama" and metrics["count"] == 3
    assert metrics["protocol"] == "both" and metrics["shots"] == 0 and metrics["skipped_records"] == 0
    assert [r["index"] for r in records] == [0, 1, 2] and [r["gold"] for r in records] == ["A", "A", "B"]
    assert records[0]["prompt"].startswith("阅读下面的文章并从选项中选择的答案回答问题：\n\n\n\n男：你好")
    assert [o["continuation"] for o in records[2]["loglik"]["options"]] == ["经济发展很慢", "经济发展很快", "没有说",
                                                                          "不知道"]
    assert all({"logprob", "tokens", "chars", "split"} <= set(o) for r in records for o in r["loglik"]["options"])
    for key, value in recomputed(records).items():
        assert metrics[key] == pytest.approx(value)
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_evaluate_function_runs_logiqa_with_k_shot_prompts(tmp_path, tiny_model_dir, logiqa_file):
    from panda.eval import evaluate

    metrics = evaluate(str(tiny_model_dir), str(logiqa_file), "logiqa_v2", "loglik", name="logiqa_v2", shots=1,
                       train_path=str(logiqa_file), output_dir=str(tmp_path / "runs"), label="tiny")
    assert set(metrics) >= {"count", "loglik/acc", "loglik/acc_norm", "run_dir"}
    assert "generate/acc" not in metrics and metrics["count"] == 3 and metrics["model"] == "tiny"
    written, records = read_run(Path(metrics["run_dir"]))
    assert written["loglik/acc"] == metrics["loglik/acc"]
    assert all(r["prompt"].count("答案是 ") == 1 for r in records)  # one exemplar each
    assert records[0]["prompt"].endswith(build_prompt_of(logiqa_file, 0))


def build_prompt_of(path, index):
    from panda.eval.benchmarks import read_benchmark

    return build_prompt(read_benchmark(path, "logiqa_v2")[index]).split("\n\n\n\n", 1)[1]


def test_every_eval_config_parses_with_its_classes(tmp_path, tiny_model_dir, c3_file):
    for name in ("logiqa_v2", "c3_d", "c3_m"):
        cli = lightning(["--config", str(CONFIGS / f"{name}.yaml"), "--model.init_args.model", str(tiny_model_dir),
                    "--data.init_args.path", str(c3_file)], run=False)
        assert type(cli.model).__name__ == "MultipleChoiceEvaluator" and cli.model.model is None  # weights lazy
        assert cli.datamodule.name == name


def test_panda_training_checkpoint_is_evaluated_through_its_hf_model(tmp_path, tiny_llama_config, tokenizer_dir,
                                                                     c3_file):
    model_module = pytest.importorskip("panda.model.module")
    import lightning
    import torch

    from panda.eval import evaluate

    torch.manual_seed(0)
    module = model_module.PandaLM(config=tiny_llama_config.to_diff_dict(), monitor_throughput=False)
    checkpoint = tmp_path / "run" / "step=1.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, checkpoint)
    metrics = evaluate(str(checkpoint), str(c3_file), "c3", "loglik", tokenizer=str(tokenizer_dir),
                       output_dir=str(tmp_path / "runs"))
    assert metrics["model"] == "run/step=1.ckpt" and metrics["count"] == 3
    hf_dir = tmp_path / "hf"
    module.model.save_pretrained(hf_dir)
    direct = evaluate(str(hf_dir), str(c3_file), "c3", "loglik", tokenizer=str(tokenizer_dir),
                      output_dir=str(tmp_path / "runs"))
    assert (metrics["loglik/acc"], metrics["loglik/acc_norm"]) == (direct["loglik/acc"], direct["loglik/acc_norm"])


def test_bfloat16_weights_score_like_float32(tmp_path, tiny_model_dir, c3_file):
    from panda.eval import evaluate

    runs = {dtype: evaluate(str(tiny_model_dir), str(c3_file), "c3", "loglik", dtype=dtype,
                            output_dir=str(tmp_path / dtype)) for dtype in ("float32", "bfloat16")}
    scores = {dtype: [o["logprob"] for r in read_run(Path(run["run_dir"]))[1] for o in r["loglik"]["options"]]
              for dtype, run in runs.items()}
    assert scores["bfloat16"] != scores["float32"]  # really computed in bf16 ...
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.05)  # ... and still the same model


def test_missing_model_is_a_clear_error(tmp_path, c3_file):
    from panda.eval import evaluate

    with pytest.raises(FileNotFoundError, match="neither a Hugging Face directory"):
        evaluate(str(tmp_path / "nothing"), str(c3_file), "c3", "loglik", output_dir=str(tmp_path / "runs"))


@pytest.mark.slow
def test_validate_on_two_ddp_ranks_counts_each_question_once(tmp_path, tiny_model_dir, c3_file):
    """3 questions on 2 ranks: the sampler pads one in twice; outputs and metrics still hold 3 (and nothing hangs)."""
    import os
    import subprocess
    import sys

    import panda

    root = Path(panda.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(root / "lightning_main.py"), "validate", "--config", str(CONFIGS / "c3_d.yaml"),
                    "--model.init_args.model", str(tiny_model_dir), "--data.init_args.path", str(c3_file),
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
                    "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
                    "--data.init_args.batch_size", "1", "--model.init_args.max_new_tokens", "4"],
                   check=True, timeout=240, env=env, cwd=tmp_path, capture_output=True)
    metrics, records = read_run(tmp_path / "runs" / "c3_d" / "version_0")
    assert metrics["count"] == 3 and [r["index"] for r in records] == [0, 1, 2]
    for key, value in recomputed(records).items():
        assert metrics[key] == pytest.approx(value)
