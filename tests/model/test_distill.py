"""Distillation on CPU: a tiny teacher trained a few steps on People's Daily text, tiny students distilled from it.

- the logged ``train/ce_loss`` and ``train/kd_loss`` equal a hand computation that runs every document of the packed
  batch alone through the models and loops over its trained positions;
- the student's KL to the teacher falls faster with distillation than with labels alone (same init, same batches);
- the offline teacher (top-k cache) with k = the vocabulary gives the online loss, and a second run reads the
  cache without loading the teacher;
- bad input is refused at start in one line naming the key.
"""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from panda.constants import IGNORE_INDEX
from panda.data import CorpusSource, PandaDataModule
from panda.data.tokenizer import train_tokenizer
from panda.errors import ConfigError
from panda.model import PandaLM
from panda.model.distill import DistilledPandaLM

STUDENT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "max_position_embeddings": 128}
TEACHER = {**STUDENT, "hidden_size": 64, "intermediate_size": 128}


def llama(tokenizer, shape: dict) -> dict:
    return {**shape, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def adam(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, chinese_paragraphs):
    path = tmp_path_factory.mktemp("distill") / "news.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in chinese_paragraphs[:120]) + "\n",
                    encoding="utf-8")
    return path


def datamodule(tokenizer_dir, corpus, batch_size: int = 4) -> PandaDataModule:
    return PandaDataModule(tokenizer=str(tokenizer_dir), max_seq_length=64, batch_size=batch_size,
                           sources=[CorpusSource(name="news", paths=str(corpus), format="jsonl")],
                           cache_dir=str(corpus.parent / "cache"))


def fit(module, data, steps: int, log_dir=None, callbacks=()) -> L.Trainer:
    logger = L.pytorch.loggers.CSVLogger(str(log_dir), name="", version="") if log_dir else False
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir, tokenizer, corpus):
    """A tiny teacher trained 60 steps on the news, saved as a model directory with the tokenizer."""
    L.seed_everything(1, verbose=False)
    module = PandaLM(config=llama(tokenizer, TEACHER), optimizer=adam(3e-3), monitor_throughput=False,
                     warmup_fraction=0.0, lr_schedule="constant")
    fit(module, datamodule(tokenizer_dir, corpus), steps=60)
    path = tmp_path_factory.mktemp("teacher")
    module.hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def student(teacher_dir, tokenizer, **kwargs) -> DistilledPandaLM:
    L.seed_everything(0, verbose=False)
    return DistilledPandaLM(teacher=str(teacher_dir), config=llama(tokenizer, STUDENT), optimizer=adam(3e-3),
                            monitor_throughput=False, warmup_fraction=0.0, lr_schedule="constant", **kwargs)


class FirstBatch(L.Callback):
    """Test helper: the first training batch and a copy of the student's weights before its step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.batch = {k: v.clone() for k, v in batch.items()}
            self.weights = {k: v.clone() for k, v in pl_module.hf_model.state_dict().items()}


def documents(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, labels)`` of every document of a packed batch (a document starts where position == 0)."""
    docs = []
    for b in range(batch["input_ids"].shape[0]):
        real = batch["source_ids"][b] >= 0
        starts = (batch["position_ids"][b] == 0) & real
        bounds = [int(i) for i in starts.nonzero()] + [int(real.sum())]
        docs += [(batch["input_ids"][b, s:e], batch["labels"][b, s:e]) for s, e in zip(bounds, bounds[1:])]
    return docs


def hand_losses(student_model, teacher_model, batch, temperature: float) -> tuple[float, float]:
    """Mean CE and mean KL(teacher ‖ student) at temperature T over the trained tokens, one document and one
    position at a time."""
    ce, kl, count = 0.0, 0.0, 0
    for ids, labels in documents(batch):
        with torch.no_grad():
            s = student_model(input_ids=ids[None]).logits[0].double()  # (L, V)
            t = teacher_model(input_ids=ids[None]).logits[0].double()
        for position in range(len(ids) - 1):
            target = int(labels[position + 1])
            if target == IGNORE_INDEX:
                continue
            ce -= float(F.log_softmax(s[position], -1)[target])
            p = F.softmax(t[position] / temperature, -1)
            kl += float((p * (p.log() - F.log_softmax(s[position] / temperature, -1))).sum())
            count += 1
    return ce / count, kl / count


def test_logged_ce_and_kd_losses_equal_a_hand_computation(teacher_dir, tokenizer_dir, tokenizer, corpus):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    alpha, temperature = 0.3, 2.0
    module = student(teacher_dir, tokenizer, alpha=alpha, temperature=temperature)
    first = FirstBatch()
    trainer = fit(module, datamodule(tokenizer_dir, corpus), steps=1, callbacks=[first])
    reference = LlamaForCausalLM(LlamaConfig(**llama(tokenizer, STUDENT)))
    reference.load_state_dict(first.weights)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    ce, kl = hand_losses(reference.eval(), teacher.eval(), first.batch, temperature)
    logged = trainer.callback_metrics
    assert float(logged["train/ce_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(logged["train/kd_loss"]) == pytest.approx(kl, rel=1e-5)
    assert float(logged["train/loss"]) == pytest.approx(alpha * ce + (1 - alpha) * temperature ** 2 * kl, rel=1e-5)
    assert not any(p is q for p in module.parameters() for q in module.teacher.parameters())
    assert not any(k.startswith("teacher") or "_frozen" in k for k in module.state_dict())  # not checkpointed


def logged(log_dir, key: str) -> list[float]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def test_distillation_brings_the_student_closer_to_the_teacher_than_labels_alone(teacher_dir, tokenizer_dir,
                                                                                  tokenizer, corpus, tmp_path):
    """Same init, same batches; ``alpha=1`` trains on labels only (its kd_loss is still measured)."""
    curves = {}
    for name, alpha in (("ce", 1.0), ("kd", 0.0)):
        fit(student(teacher_dir, tokenizer, alpha=alpha, temperature=1.0), datamodule(tokenizer_dir, corpus), 40,
            log_dir=tmp_path / name)
        curves[name] = logged(tmp_path / name, "train/kd_loss")
    ce, kd = curves["ce"], curves["kd"]
    print("KL(teacher‖student) by step, labels only:", [round(x, 3) for x in ce[::5]], "distilled:",
          [round(x, 3) for x in kd[::5]])
    assert ce[0] == pytest.approx(kd[0], rel=1e-6)  # the same start
    late = slice(-10, None)
    assert sum(kd[late]) / 10 < 0.8 * sum(ce[late]) / 10
    assert kd[0] - sum(kd[late]) / 10 > ce[0] - sum(ce[late]) / 10


def test_offline_teacher_cache_matches_online_and_runs_the_teacher_once(teacher_dir, tokenizer_dir, tokenizer,
                                                                        corpus, tmp_path, monkeypatch):
    vocab = len(tokenizer)
    online = fit(student(teacher_dir, tokenizer, temperature=2.0), datamodule(tokenizer_dir, corpus), 1)
    cached = fit(student(teacher_dir, tokenizer, temperature=2.0, teacher_cache=str(tmp_path), top_k=vocab),
                 datamodule(tokenizer_dir, corpus), 1)
    for key in ("train/kd_loss", "train/ce_loss", "train/loss"):
        assert float(cached.callback_metrics[key]) == pytest.approx(float(online.callback_metrics[key]), rel=1e-5)
    (folder,) = tmp_path.glob("teacher-*")
    assert [p.name for p in folder.iterdir()] == ["shard-0-of-1"]

    import panda.model.distill as distill

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its logits are cached")

    monkeypatch.setattr(distill.AutoModelForCausalLM, "from_pretrained", no_teacher)
    again = fit(student(teacher_dir, tokenizer, temperature=2.0, teacher_cache=str(tmp_path), top_k=vocab),
                datamodule(tokenizer_dir, corpus), 3)
    assert math.isfinite(float(again.callback_metrics["train/kd_loss"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, r"model.init_args.alpha=1.5: expected a weight in \[0, 1\]"),
    ({"alpha": -0.1}, r"model.init_args.alpha=-0.1"),
    ({"temperature": 0.0}, r"model.init_args.temperature=0.0: expected a temperature > 0"),
    ({"top_k": 0}, r"model.init_args.top_k=0"),
])
def test_bad_settings_are_refused_naming_the_key(teacher_dir, tokenizer, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        student(teacher_dir, tokenizer, **kwargs)


def test_a_directory_that_is_not_a_model_is_refused(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match=r"model.init_args.teacher=.*not a model directory \(no config.json\)"):
        student(tmp_path, tokenizer)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"model.init_args.teacher=.*"):
        student(tmp_path, tokenizer)


def test_a_teacher_with_another_vocabulary_is_refused_at_start(tmp_path, tokenizer_dir, tokenizer, corpus,
                                                               chinese_paragraphs):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = train_tokenizer(chinese_paragraphs[:300], tmp_path / "other", vocab_size=2500)
    from panda.data.tokenizer import load_tokenizer

    other_tokenizer = load_tokenizer(other)
    LlamaForCausalLM(LlamaConfig(**llama(other_tokenizer, STUDENT))).save_pretrained(other)
    module = student(other, tokenizer)
    with pytest.raises(ConfigError, match=r"model.init_args.teacher=.*other.* and the student's data.tokenizer "
                                          r"have different vocabularies \(2500 tokens vs 4000"):
        fit(module, datamodule(tokenizer_dir, corpus), 1)


@pytest.mark.slow
def test_distillation_runs_under_two_process_zero1(teacher_dir, tokenizer_dir, tokenizer, corpus, tmp_path):
    """The teacher beside a ZeRO-1 student in 2 CPU processes: each rank's copy frozen, outside DeepSpeed's engine
    and its checkpoint."""
    import yaml

    from tests.training.test_resume import fit as fit_command_line, logged_losses, write_config

    path = write_config(tmp_path / "kd.yaml", tmp_path / "run", tokenizer_dir, corpus, len(tokenizer))
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["model"]["class_path"] = "panda.model.distill.DistilledPandaLM"
    config["model"]["init_args"].update(teacher=str(teacher_dir), alpha=0.5, temperature=2.0,
                                        config=llama(tokenizer, STUDENT))
    config["trainer"]["max_steps"] = 4
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    fit_command_line(path)
    assert sorted(logged_losses(tmp_path / "run")) == [0, 1, 2, 3]
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv", newline="") as handle:
        kd = [float(row["train/kd_loss"]) for row in csv.DictReader(handle) if row.get("train/kd_loss")]
    assert len(kd) == 4 and all(math.isfinite(x) for x in kd)
    checkpoint = tmp_path / "run" / "checkpoints" / "step=00000004.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt"
    module = torch.load(checkpoint, weights_only=False)["module"]
    assert module and not any("teacher" in key for key in module)
