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

from panda.cli import lightning, parse

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIGS / "base.yaml"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
# base.yaml leaves the data sources to the experiment; fragments are checked with a stand-in source
STAND_IN_DATA = ["--data.init_args.tokenizer", "checkpoints/tokenizer", "--data.init_args.sources",
                 "[{name: text, paths: data/text.jsonl, format: jsonl}]"]
FRAGMENT_FLAG = {"model": "--model", "data": "--data", "trainer": "--trainer", "strategy": "--trainer.strategy"}
WHOLE_CONFIG_KEYS = {"model", "data", "trainer", "seed_everything", "ckpt_path"}


def composed_after(path: Path) -> list[Path]:
    """The experiments an experiment extends (``# compose after: panda_7b.yaml`` on its first line), outermost first:
    an experiment file holds only its differences (13B = 7B + what differs)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("# compose after:"):
        return []
    parent = path.parent / first.split(":", 1)[1].strip()
    return [*composed_after(parent), parent]


def experiment_arguments(path: Path) -> list[str]:
    """``--config base.yaml [--config <extended> ...] --config path``: how the README runs an experiment."""
    return ["--config", str(BASE), *[a for p in composed_after(path) for a in ("--config", str(p))], "--config",
            str(path)]


def arguments_for(path: Path) -> list[str]:
    """How the CLI is given ``path``: alone, after base.yaml, or as a fragment of a base run."""
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    folder = path.relative_to(CONFIGS).parts[0]
    if path == BASE:
        return ["--config", str(BASE), *STAND_IN_DATA]
    if set(content) & WHOLE_CONFIG_KEYS:
        if folder == "eval" or "model" in content and "PandaLM" not in str(content["model"].get("class_path", "PandaLM")):
            return ["--config", str(path)]  # its own model and data (evaluation)
        return experiment_arguments(path)
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
    return parse(experiment_arguments(CONFIGS / "experiments" / f"{name}.yaml"))


def _assert_cluster(config, micro_batch: int, *, rows: int | None = None, tokens: int | None = None):
    trainer = config.trainer
    assert (trainer.num_nodes, trainer.devices, trainer.accelerator) == (2, 8, "gpu")
    assert trainer.precision == "bf16-mixed"
    assert trainer.strategy.class_path == "panda.training.strategy.PandaDeepSpeedStrategy"
    assert trainer.strategy.init_args.collective_timeout == 600
    assert trainer.strategy.init_args.stage == 1
    assert trainer.gradient_clip_val == 5.0
    assert trainer.accumulate_grad_batches == 1  # derived by GlobalBatchSize for the actual world size
    (batch,) = [c for c in trainer.callbacks if c.class_path.endswith("GlobalBatchSize")]
    assert (batch.init_args.rows, batch.init_args.tokens) == (rows, tokens)
    assert config.data.class_path == "panda.data.PandaDataModule"
    assert config.data.init_args.batch_size == micro_batch and config.data.init_args.max_seq_length == 2048
    model = config.model.init_args
    assert config.model.class_path == "panda.model.PandaLM"
    assert model.activation_checkpointing is True
    optimizer = model.optimizer
    assert optimizer.class_path == "torch.optim.AdamW"
    assert tuple(optimizer.init_args.betas) == (0.9, 0.99) and optimizer.init_args.eps == 1e-6
    for path in [model.pretrained, config.data.init_args.tokenizer, *[s.paths for s in config.data.init_args.sources]]:
        for p in [path] if isinstance(path, str) else path:
            assert not str(p).startswith(("/", "~")), f"machine path {p} in an experiment config"
    return config


def _accumulation(config, world_size: int = 16) -> int:
    from panda.training.batch_size import plan_batch

    (batch,) = [c for c in config.trainer.callbacks if c.class_path.endswith("GlobalBatchSize")]
    return plan_batch(micro_batch=config.data.init_args.batch_size, world_size=world_size,
                      rows=batch.init_args.rows, tokens=batch.init_args.tokens,
                      max_seq_length=config.data.init_args.max_seq_length).accumulation


def _checkpoint_every(config) -> int:
    (callback,) = [c for c in config.trainer.callbacks if c.class_path.endswith("AtomicCheckpoint")]
    return callback.init_args.every_n_train_steps


def _schedule(config) -> tuple:
    model = config.model.init_args
    return model.lr_schedule, model.warmup_fraction, model.warmup_steps


SIX_CORPORA = {"wiki2019zh", "news2016zh", "baike2018qa", "webtext2019zh", "translation2019zh"}
COIG_FORMATS = {"coig_translated", "coig_exam", "coig_instruction", "coig_counterfactual"}


def _sources(config) -> dict:
    """The parsed sources as :class:`CorpusSource` s (their resolved loss policy), by name."""
    from panda.data.sources import CorpusSource

    return {s.name: CorpusSource(**s.as_dict()) for s in config.data.init_args.sources}


def _formats(config) -> set[str]:
    return {s.format for s in config.data.init_args.sources}


def test_reference_panda_7b():
    """pandallm 5df850f conf/llama/zh/llama_7b_zh_instruct_v1_0_ds.yaml + zh_instruct.py/flan.py collation."""
    config = _assert_cluster(_experiment("reference/panda_7b"), micro_batch=4, rows=8192)
    assert _accumulation(config) == 128 and _accumulation(config, world_size=8) == 256
    assert config.model.init_args.optimizer.init_args.lr == 1e-5
    assert config.model.init_args.optimizer.init_args.weight_decay == 0.0
    assert config.trainer.max_epochs == 1 and _checkpoint_every(config) == 250
    assert _schedule(config) == ("constant", 0.01, 1157)  # 1 % of the planned 115,721 steps, then ≈ flat
    assert config.model.init_args.pretrained == config.data.init_args.tokenizer == "checkpoints/llama-7b-pad-hf"
    data = config.data.init_args
    assert (data.packing, data.pad_to) == (False, "longest")  # each micro-batch padded to its longest example
    assert _formats(config) == SIX_CORPORA | COIG_FORMATS  # no WuDao, no C4
    sources = _sources(config)
    assert sources["wiki"].full_loss and sources["news"].full_loss
    assert not any(s.full_loss for name, s in sources.items() if name not in ("wiki", "news"))
    assert all(s.join == " " for name, s in sources.items() if name not in ("wiki", "news"))
    assert sources["coig_counterfactual"].multi_turn == "panda_compat"
    assert {s.weight for s in data.sources} == {1.0}
    # 14,812,376 examples / 8,192 per step ≈ 1,808 optimizer steps on 16 GPUs (or on 8)
    assert round(14_812_376 / (4 * 16 * _accumulation(config))) == 1808


def test_reference_panda_13b_is_7b_plus_its_differences():
    config = _assert_cluster(_experiment("reference/panda_13b"), micro_batch=2, rows=4096)
    assert _accumulation(config) == 128
    assert config.model.init_args.pretrained == config.data.init_args.tokenizer == "checkpoints/llama-13b-pad-hf"
    assert _schedule(config) == ("linear", 0.01, None)  # its schedule was sized from the data loader
    seven = _experiment("reference/panda_7b")
    assert [s.name for s in config.data.init_args.sources] == [s.name for s in seven.data.init_args.sources]
    assert config.model.init_args.optimizer.init_args.lr == 1e-5 and _checkpoint_every(config) == 250


def test_reference_panda_instruct_7b_and_13b():
    config = _assert_cluster(_experiment("reference/panda_instruct_7b"), micro_batch=4, rows=128)
    assert _accumulation(config) == 2 and config.trainer.max_epochs == 5
    assert config.model.init_args.optimizer.init_args.lr == 3e-5 and _checkpoint_every(config) == 250
    assert config.model.init_args.pretrained == "checkpoints/panda-7b-step1750-hf"
    assert _formats(config) == COIG_FORMATS and {s.weight for s in config.data.init_args.sources} == {1.0}
    assert config.data.init_args.packing is False
    thirteen = _assert_cluster(_experiment("reference/panda_instruct_13b"), micro_batch=2, rows=128)
    assert _accumulation(thirteen) == 4 and thirteen.trainer.max_epochs == 5
    assert thirteen.model.init_args.optimizer.init_args.lr == 1e-5 and _checkpoint_every(thirteen) == 1000
    assert thirteen.model.init_args.pretrained == "checkpoints/panda-13b-step3500-hf"


def test_reference_flan_llama_7b_uses_the_samplers_proportions():
    """pandallm 5df850f conf/llama/wiki/llama_7b_flan_v1_4_ds.yaml and data/flan_sample.py (7M, head of each file)."""
    config = _assert_cluster(_experiment("reference/flan_llama_7b"), micro_batch=4, rows=8192)
    optimizer = config.model.init_args.optimizer.init_args
    assert (optimizer.lr, optimizer.weight_decay) == (5e-5, 0.01)
    assert _schedule(config) == ("constant", 0.01, 100)
    counts = {s.name: s.max_records for s in config.data.init_args.sources}
    assert sum(counts.values()) == 7_000_000
    shares = {name: sum(v for k, v in counts.items() if k.startswith(name)) / 7_000_000
              for name in ("flan_zs", "t0_zs", "niv2_zs", "cot_zs", "dialog_zs")}
    assert shares == {"flan_zs": 0.4, "t0_zs": 0.32, "niv2_zs": 0.2, "cot_zs": 0.05, "dialog_zs": 0.03}
    assert all(s.format == "flan" and s.join == " " for s in config.data.init_args.sources)


def test_improved_panda_7b_and_13b():
    config = _assert_cluster(_experiment("panda_7b"), micro_batch=4, tokens=6_553_600)
    assert _accumulation(config) == 50 and _accumulation(config, world_size=8) == 100
    assert config.model.init_args.pretrained == config.data.init_args.tokenizer == "checkpoints/llama-7b-hf"
    assert _schedule(config) == ("linear", 0.01, None)
    assert config.model.init_args.optimizer.init_args.lr == 1e-5 and _checkpoint_every(config) == 250
    data = config.data.init_args
    assert data.packing is True and _formats(config) == SIX_CORPORA | COIG_FORMATS
    sources = _sources(config)
    assert sources["coig_counterfactual"].multi_turn == "conversation" and sources["coig_exam"].weight == 4.0
    assert sources["wiki"].full_loss and sources["news"].full_loss and not sources["baike_qa"].full_loss
    thirteen = _assert_cluster(_experiment("panda_13b"), micro_batch=2, tokens=3_276_800)
    assert _accumulation(thirteen) == 50 and thirteen.model.init_args.pretrained == "checkpoints/llama-13b-hf"
    assert [s.name for s in thirteen.data.init_args.sources] == list(sources)


def test_improved_panda_instruct_7b_and_13b():
    config = _assert_cluster(_experiment("panda_instruct_7b"), micro_batch=2, tokens=65_536)
    assert _accumulation(config) == 1 and config.trainer.max_epochs == 5
    assert config.model.init_args.optimizer.init_args.lr == 3e-5
    assert _formats(config) == COIG_FORMATS and config.data.init_args.packing is True
    weights = [s.weight for s in config.data.init_args.sources]
    assert min(weights) == 1.0 and max(weights) > 1.0  # every COIG part at least once, the human-checked upsampled
    thirteen = _assert_cluster(_experiment("panda_instruct_13b"), micro_batch=2, tokens=65_536)
    assert thirteen.model.init_args.optimizer.init_args.lr == 1e-5 and _checkpoint_every(thirteen) == 1000


def test_data_fragments_name_every_public_corpus():
    for name in ("panda_pretrain", "reference/panda_pretrain"):
        config = parse(["--config", str(BASE), "--data", str(CONFIGS / "data" / f"{name}.yaml")])
        assert _formats(config) == SIX_CORPORA | COIG_FORMATS, name
    sft = parse(["--config", str(BASE), "--data", str(CONFIGS / "data" / "reference" / "coig_sft.yaml")])
    assert _formats(sft) == COIG_FORMATS


def test_print_config_shows_the_composed_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lightning(["fit", "--config", str(BASE), "--config", str(CONFIGS / "experiments" / "panda_7b.yaml"),
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


def test_distillation_configs_keep_the_experiment_and_name_teacher_and_student():
    config = parse(["--config", str(BASE), "--config", str(CONFIGS / "experiments" / "panda_7b.yaml"),
                    "--model", str(CONFIGS / "model" / "distill_13b_to_7b.yaml")])
    model = config.model.init_args
    assert config.model.class_path == "panda.model.distill.DistilledPandaLM"
    assert (model.teacher, model.pretrained) == ("checkpoints/panda-13b-hf", "checkpoints/llama-7b-hf")
    assert (model.alpha, model.temperature, model.teacher_cache) == (0.5, 2.0, None)
    assert model.optimizer.init_args.lr == 1e-5  # the experiment's optimizer survives the model swap
    tiny = parse(["--config", str(BASE), "--config", str(CONFIGS / "experiments" / "demo.yaml"),
                  "--model", str(CONFIGS / "model" / "distill_tiny.yaml")]).model.init_args
    assert (tiny.teacher_cache, tiny.top_k, tiny.config["hidden_size"]) == ("runs/teacher_cache", 64, 64)


def test_qlora_config_loads_the_13b_body_in_nf4():
    config = parse(["--config", str(BASE), "--config", str(CONFIGS / "experiments" / "panda_7b.yaml"),
                    "--model", str(CONFIGS / "model" / "llama_13b_qlora.yaml")])
    model = config.model.init_args
    assert model.pretrained == "checkpoints/llama-13b-hf"
    assert (model.lora.quantize, model.lora.compute_dtype, model.lora.double_quant, model.lora.r) == (
        "nf4", "bfloat16", True, 64)
    assert config.trainer.strategy.init_args.stage in (1, 2)  # ZeRO-3 would be refused
