"""PandaDataModule: the batch contract, exact length, the mix, rank splits, validation, and exact resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from panda.constants import IGNORE_INDEX
from panda.data import CorpusSource, PandaDataModule
from panda.data.report import BadRecordError
from tests.data.mixing_corpora import write_corpora

MAX_LEN = 128


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, chinese_paragraphs):
    root = tmp_path_factory.mktemp("corpora")
    return write_corpora(root, chinese_paragraphs, news=120, coig=40)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def make_dm(corpora, tokenizer_dir, cache_dir, coig_weight=2.5, **kwargs):
    sources = [corpora["news"], dataclasses.replace(corpora["coig"], weight=coig_weight)]
    kwargs = {"max_seq_length": MAX_LEN, "batch_size": 2, "cache_dir": cache_dir, **kwargs}
    dm = PandaDataModule(str(tokenizer_dir), sources, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fingerprints(batches) -> list[list[int]]:
    """Per batch: the token sum of each row (identifies rows without keeping the tensors)."""
    return [b["input_ids"].sum(dim=1).tolist() + b["source_ids"][:, 0].tolist() for b in batches]


def test_batches_follow_the_batch_contract_and_len_is_exact(corpora, tokenizer_dir, cache_dir):
    dm = make_dm(corpora, tokenizer_dir, cache_dir)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == len(dm.train_dataloader())
    for batch in batches:
        assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask", "source_ids"}
        assert all(t.dtype == torch.long and t.shape == batch["input_ids"].shape for t in batch.values())
        assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape[1] <= MAX_LEN
        pad = batch["attention_mask"] == 0
        assert torch.all(batch["labels"][pad] == IGNORE_INDEX) and torch.all(batch["source_ids"][pad] == -1)
        starts = batch["position_ids"] == 0
        assert torch.all(batch["labels"][starts] == IGNORE_INDEX)  # every document's BOS is unlearned
        assert torch.all(batch["input_ids"][starts & ~pad] == 1)
    assert dm.source_names == ["news", "coig"]


def test_realized_mix_is_within_one_percent_of_the_weights(corpora, tokenizer_dir, cache_dir):
    dm = make_dm(corpora, tokenizer_dir, cache_dir, coig_weight=2.5)
    stats = dm.epoch_stats(0)
    for name, s in stats["sources"].items():
        assert abs(s["realized_share"] - s["target_share"]) < 0.01, (name, s)
    coig = stats["sources"]["coig"]
    assert coig["rows"] == round(2.5 * dm.train_rows.row_counts[1])
    # the batches really carry that mix: count documents per source over one epoch
    documents = np.zeros(2)
    for batch in dm.train_dataloader():
        starts = (batch["position_ids"] == 0) & (batch["attention_mask"] == 1)
        documents += np.bincount(batch["source_ids"][starts].numpy(), minlength=2)
    padded_rows = len(dm.train_dataloader()) * dm.batch_size - sum(s["rows"] for s in stats["sources"].values())
    assert padded_rows < dm.batch_size
    assert abs(documents[1] / documents.sum() - coig["target_share"]) < 0.01 + padded_rows * 4 / documents.sum()
    assert 0.95 < stats["useful_fraction"] <= 1.0


def test_ranks_see_disjoint_rows(corpora, tokenizer_dir, cache_dir):
    dm = make_dm(corpora, tokenizer_dir, cache_dir)
    rows = []
    for rank in (0, 1):
        dm.rank, dm.world_size = rank, 2
        sampler = dm.train_dataloader().sampler
        rows.append([tuple(b) for b in sampler])
    assert len(rows[0]) == len(rows[1]) == -(-sampler.plan_rows // 4)
    positions = [np.concatenate(r) for r in rows]
    plan = sampler.plan(0)
    # rank r takes plan blocks r, r+2, r+4, ...: together exactly the plan (+ wrap-around padding)
    interleaved = np.stack([positions[0].reshape(-1, 2), positions[1].reshape(-1, 2)], axis=1).reshape(-1)
    assert np.array_equal(interleaved[:len(plan)], plan)


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_mid_epoch_with_two_ranks_and_workers(corpora, tokenizer_dir, cache_dir, rank):
    def dm_for_rank():
        dm = make_dm(corpora, tokenizer_dir, cache_dir, num_workers=2)
        dm.rank, dm.world_size = rank, 2
        return dm

    first = dm_for_rank()
    expected = fingerprints(first.train_dataloader())
    iterator = iter(first.train_dataloader())
    for _ in range(5):  # the workers prefetch further than this; the state must not
        next(iterator)
    state = first.state_dict()
    assert {k: state[k] for k in ("epoch", "consumed")} == {"epoch": 0, "consumed": 5}
    del iterator

    fresh = dm_for_rank()
    fresh.load_state_dict(json.loads(json.dumps(state)))  # survives serialization
    loader = fresh.train_dataloader()
    assert fresh.state_dict() == state  # a checkpoint taken before the first batch keeps the resume point
    assert fingerprints(loader) == expected[5:]


def test_state_restored_after_the_loader_was_iterated(corpora, tokenizer_dir, cache_dir):
    """DeepSpeed restores the datamodule after Lightning built the loader and called iter() on it."""
    dm = make_dm(corpora, tokenizer_dir, cache_dir, num_workers=2)
    expected = fingerprints(dm.train_dataloader())
    fresh = make_dm(corpora, tokenizer_dir, cache_dir, num_workers=2)
    iterator = iter(fresh.train_dataloader())
    fresh.load_state_dict({"epoch": 0, "consumed": 3})
    assert fingerprints(iterator) == expected[3:]


def test_resume_refuses_a_changed_plan(corpora, tokenizer_dir, cache_dir):
    dm = make_dm(corpora, tokenizer_dir, cache_dir)
    dm.train_dataloader()
    state = dm.state_dict()
    other = make_dm(corpora, tokenizer_dir, cache_dir, batch_size=3)
    other.train_dataloader()
    with pytest.raises(ValueError, match="batch_size: 2 → 3"):
        other.load_state_dict(state)


class Recorder(LightningModule):
    """Records what each training step saw; one parameter so the optimizer has something to step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen += fingerprints([batch])
        return (self.weight * batch["attention_mask"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, tmp_path, ckpt_path=None) -> Recorder:
    module = Recorder()
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=4,
                                 save_top_k=-1),
                 ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="end-{epoch}", every_n_epochs=1,
                                 save_on_train_epoch_end=True, save_top_k=-1)]
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_lightning_resume_sees_exactly_the_uninterrupted_batches(corpora, tokenizer_dir, cache_dir, tmp_path):
    dm = make_dm(corpora, tokenizer_dir, cache_dir, num_workers=2, batch_size=4)
    per_epoch = len(dm.train_dataloader())
    uninterrupted = fit(dm, tmp_path).seen
    assert len(uninterrupted) == 2 * per_epoch
    assert uninterrupted[:per_epoch] != uninterrupted[per_epoch:]  # epochs are reshuffled
    resume_points = {"step=4.ckpt": 4, f"step={per_epoch // 4 * 4 + 4}.ckpt": per_epoch // 4 * 4 + 4,
                     "end-epoch=0.ckpt": per_epoch}
    for name, step in resume_points.items():
        fresh = make_dm(corpora, tokenizer_dir, cache_dir, num_workers=2, batch_size=4)
        resumed = fit(fresh, tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / name)).seen
        assert resumed == uninterrupted[step:], name


def test_validation_split_is_held_out_and_deterministic(corpora, tokenizer_dir, cache_dir):
    dm = make_dm(corpora, tokenizer_dir, cache_dir, val_fraction=0.1, val_sources=[
        dataclasses.replace(corpora["coig"], name="coig_val")])
    assert dm.source_names == ["news", "coig", "coig_val"]
    val = dm.val_rows
    held = {(id(c), int(r)) for c, m in zip(val.caches, val.row_maps) if m is not None for r in m}
    train = {(id(c), int(r)) for c, m in zip(dm.train_rows.caches, dm.train_rows.row_maps) for r in m}
    assert held and not held & train
    assert len(held) + len(train) == sum(c.num_rows for c in dm.train_caches)
    first, second = fingerprints(dm.val_dataloader()), fingerprints(dm.val_dataloader())
    assert first == second
    source_order = [row[-1] for row in first]  # source of each batch's first row: in order, never shuffled
    assert source_order == sorted(source_order)
    assert sum(len(b) // 2 for b in first) == len(val)  # every val row once (single process: no padding)


def test_an_empty_mix_is_an_error(corpora, tokenizer_dir, cache_dir):
    dm = PandaDataModule(str(tokenizer_dir), [dataclasses.replace(corpora["news"], weight=0.0)], cache_dir=cache_dir,
                         max_seq_length=MAX_LEN)
    dm.setup("fit")
    with pytest.raises(ValueError, match="training mix is empty"):
        dm.train_dataloader()


def test_no_validation_gives_no_val_loader(corpora, tokenizer_dir, cache_dir):
    assert make_dm(corpora, tokenizer_dir, cache_dir).val_dataloader() == []


def test_strict_stops_at_the_first_bad_record(tmp_path, tokenizer_dir, cache_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "第一行"}\n{"text": 3}\n', encoding="utf-8")
    source = CorpusSource("web", str(bad), "jsonl")
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:2"):
        PandaDataModule(str(tokenizer_dir), [source], cache_dir=cache_dir, strict=True).setup("fit")
    lenient = PandaDataModule(str(tokenizer_dir), [source], cache_dir=cache_dir, max_seq_length=64)
    lenient.setup("fit")
    assert "bad.jsonl:2" in lenient.summary()
    meta = lenient.train_caches[0].meta
    assert (meta["read"], meta["used"], meta["skipped"]) == (2, 1, 1)


def test_paths_expand_environment_variables(monkeypatch, corpora, tokenizer_dir, cache_dir):
    source = CorpusSource("news", "${PANDA_DATA}/news.json", "wudao")
    unset = PandaDataModule(str(tokenizer_dir), [source], cache_dir=cache_dir)  # configs parse without the variable
    with pytest.raises(ValueError, match=r"data.sources 'news'.*PANDA_DATA, which is not set"):
        unset.setup("fit")
    monkeypatch.setenv("PANDA_DATA", str(corpora["news"].files()[0].parent))
    dm = PandaDataModule(str(tokenizer_dir), [source], cache_dir=cache_dir, max_seq_length=MAX_LEN)
    dm.setup("fit")
    assert dm.sources[0].files() == corpora["news"].files()
