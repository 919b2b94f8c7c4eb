"""Every YAML under configs/ parses through the CLI parser; the experiment files hold Panda's reference settings.

Fragments are composed the way the README runs them: experiment and eval files are whole configs, ``model/`` and
``data/`` fragments go to ``--model``/``--data``, ``trainer/`` ones to ``--trainer`` and ``strategy/`` ones to
``--trainer.strategy``. Parsing resolves every ``class_path`` and checks every key and type without building
models or reading data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panda.cli import main, parse

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIGS / "base.yaml"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
# base.yaml leaves the data sources to the experiment; fragments are checked with a stand-in source
STAND_IN_DATA = ["--data.init_args.tokenizer", "checkpoints/tokenizer", "--data.init_args.sources",
                 "[{name: text, paths: data/text.jsonl, format: jsonl}]"]
FRAGMENT_FLAG = {"model": "--model", "data": "--data", "trainer": "--trainer", "strategy": "--trainer.strategy"}
WHOLE_CONFIG_KEYS = {"model", "data", "trainer", "seed_everything", "ckpt_path"}


def arguments_for(path: Path) -> list[str]:
    """How the CLI is given ``path``: alone, after base.yaml, or as a fragment of a base run."""
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    folder = path.relative_to(CONFIGS).parts[0]
    if path == BASE:
        return ["--config", str(BASE), *STAND_IN_DATA]
    if set(content) & WHOLE_CONFIG_KEYS:
        if folder == "eval" or "model" in content and "PandaLM" not in str(content["model"].get("class_path")):
            return ["--config", str(path)]  # its own model and data (evaluation)
        return ["--config", str(BASE), "--config", str(path)]
    if folder not in FRAGMENT_FLAG:
        raise AssertionError(f"{path}: no rule to compose this config; add one to tests/test_configs.py")
    return ["--config", str(BASE), *STAND_IN_DATA, FRAGMENT_FLAG[folder], str(path)]


def test_every_folder_is_covered():
    assert {p.relative_to(CONFIGS).parts[0] for p in ALL_CONFIGS if p != BASE} >= {"model", "trainer", "experiments"}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS])
def test_config_parses(path):
    config = parse(arguments_for(path))
    assert config.model.class_path and config.data.class_path


def _experiment(name: str):
    return parse(["--config", str(BASE), "--config", str(CONFIGS / "experiments" / f"{name}.yaml")])


def _assert_cluster(config, micro_batch: int, accumulation: int):
    trainer = config.trainer
    assert (trainer.num_nodes, trainer.devices, trainer.accelerator) == (2, 8, "gpu")
    assert trainer.precision == "bf16-mixed"
    assert trainer.strategy.class_path == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert trainer.strategy.init_args.stage == 1
    assert trainer.gradient_clip_val == 5.0
    assert trainer.accumulate_grad_batches == accumulation
    assert config.data.class_path == "panda.data.PandaDataModule"
    assert config.data.init_args.batch_size == micro_batch and config.data.init_args.max_seq_length == 2048
    model = config.model.init_args
    assert config.model.class_path == "panda.model.PandaLM"
    assert model.lr_schedule == "linear" and model.warmup_fraction == 0.01
    assert model.activation_checkpointing is True
    optimizer = model.optimizer
    assert optimizer.class_path == "torch.optim.AdamW"
    assert tuple(optimizer.init_args.betas) == (0.9, 0.99)
    assert optimizer.init_args.eps == 1e-6 and optimizer.init_args.weight_decay == 0.0
    for path in [model.pretrained, config.data.init_args.tokenizer, *[s.paths for s in config.data.init_args.sources]]:
        assert not str(path).startswith(("/", "~")), f"machine path {path} in an experiment config"
    return config


def _checkpoint_every(config) -> int:
    (callback,) = [c for c in config.trainer.callbacks if c.class_path.endswith("AtomicCheckpoint")]
    return callback.init_args.every_n_train_steps


def test_panda_7b_reference_hyperparameters():
    config = _assert_cluster(_experiment("panda_7b"), micro_batch=4, accumulation=128)
    assert config.model.init_args.optimizer.init_args.lr == 1e-5
    assert config.trainer.max_epochs == 1
    assert _checkpoint_every(config) == 250
    assert "7b" in config.model.init_args.pretrained
    sources = {s.name: s for s in config.data.init_args.sources}
    assert sources["wiki"].loss == sources["news"].loss == "full"  # the reference's full-loss corpora
    assert sources["coig"].loss == "conditional" and sources["coig"].format == "coig"


def test_panda_13b_differs_only_in_model_and_batch():
    config = _assert_cluster(_experiment("panda_13b"), micro_batch=2, accumulation=128)
    assert "13b" in config.model.init_args.pretrained
    assert config.model.init_args.optimizer.init_args.lr == 1e-5 and config.trainer.max_epochs == 1
    assert _checkpoint_every(config) == 250
    seven = _experiment("panda_7b")
    assert [s.name for s in config.data.init_args.sources] == [s.name for s in seven.data.init_args.sources]


def test_panda_instruct_7b_reference_hyperparameters():
    config = _assert_cluster(_experiment("panda_instruct_7b"), micro_batch=4, accumulation=2)
    assert config.model.init_args.optimizer.init_args.lr == 3e-5
    assert config.trainer.max_epochs == 5
    assert _checkpoint_every(config) == 50
    assert "panda-7b" in config.model.init_args.pretrained  # starts from a Panda-7B checkpoint, not LLaMA
    sources = config.data.init_args.sources
    coig = [s.weight for s in sources if s.format == "coig"]
    assert coig and min(coig) >= 1.0 and max(coig) > 1.0  # every COIG part at least once, some upsampled
    assert len(coig) == len(sources)  # COIG only, as the reference
    assert all(s.loss in (None, "conditional") for s in sources if s.format == "coig")  # responses only


def test_print_config_shows_the_composed_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(BASE), "--config", str(CONFIGS / "experiments" / "panda_7b.yaml"),
              "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-5
    assert printed["trainer"]["num_nodes"] == 2


def test_default_logger_is_tensorboard_under_runs():
    config = parse(["--config", str(BASE), *STAND_IN_DATA])
    assert config.trainer.logger.class_path == "lightning.pytorch.loggers.TensorBoardLogger"
    assert config.trainer.logger.init_args.save_dir == "runs"
    assert config.trainer.enable_progress_bar is True


@pytest.mark.parametrize(("name", "format", "shots", "path"), [("ceval", "ceval", 5, "data/ceval/val"),
                                                              ("cmmlu", "cmmlu", 5, "data/cmmlu/test"),
                                                              ("agieval_zh", "agieval", 0, "data/agieval")])
def test_exam_suites_score_letters_with_their_own_prompts(name, format, shots, path):
    config = parse(["--config", str(CONFIGS / "eval" / f"{name}.yaml")])
    data, model = config.data.init_args, config.model.init_args
    assert (data.format, data.shots, data.path) == (format, shots, path)
    assert data.train_path == (path.rsplit("/", 1)[0] + "/dev" if shots else None)
    assert (model.protocol, model.continuation, model.max_new_tokens) == ("both", "letter", 64)
