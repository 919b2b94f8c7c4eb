"""Fixtures for the module tests: a tiny LLaMA config dict and a data module that yields BATCH CONTRACT batches.

The batches are built here from real People's Daily text with the session tokenizer, packed greedily into rows, so
the module is tested on exactly the contract (unshifted labels, position ids restarting per document, source ids)
without depending on the data module's own options.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from panda.constants import IGNORE_INDEX
from panda.data.tokenizer import load_tokenizer
from panda.demo.corpora import people_daily_paragraphs


def contract_batch(documents: list[list[tuple[list[int], list[int], int]]], width: int, pad_id: int) -> dict:
    """Rows of ``(input_ids, labels, source_id)`` documents → a BATCH CONTRACT dict of (B, width) tensors."""
    batch = {
        "input_ids": torch.full((len(documents), width), pad_id),
        "labels": torch.full((len(documents), width), IGNORE_INDEX),
        "position_ids": torch.zeros((len(documents), width), dtype=torch.long),
        "attention_mask": torch.zeros((len(documents), width), dtype=torch.long),
        "source_ids": torch.full((len(documents), width), -1),
    }
    for row, docs in enumerate(documents):
        start = 0
        for ids, labels, source in docs:
            end = start + len(ids)
            batch["input_ids"][row, start:end] = torch.tensor(ids)
            batch["labels"][row, start:end] = torch.tensor(labels)
            batch["position_ids"][row, start:end] = torch.arange(len(ids))
            batch["attention_mask"][row, start:end] = 1
            batch["source_ids"][row, start:end] = source
            start = end
        batch["position_ids"][row, start:] = torch.arange(width - start)
    return batch


class ContractDataModule(LightningDataModule):
    """Packs People's Daily paragraphs (source 0, full loss) and instructions made from them (source 1, prompt
    masked) into ``rows`` rows of ``width`` tokens; the same rows serve training and validation.

    Args:
        tokenizer: Tokenizer directory.
        paragraphs: How many paragraphs to read.
        width: Row length.
        batch_size: Rows per batch.
        rows: Rows in the data set.
    """

    source_names = ["news", "instructions"]

    def __init__(self, tokenizer: str, paragraphs: int = 200, width: int = 64, batch_size: int = 2, rows: int = 8):
        super().__init__()
        tokenizer = load_tokenizer(tokenizer)
        self.tokenizer, self.width, self.batch_size = tokenizer, width, batch_size
        self.max_seq_length = width
        documents = []
        for i, text in enumerate(people_daily_paragraphs()[:paragraphs]):
            if i % 2 == 0:
                ids = tokenizer(text[:40])["input_ids"] + [tokenizer.eos_token_id]
                documents.append((ids, [IGNORE_INDEX] + ids[1:], 0))
            else:
                prompt = tokenizer("这段话的主题是什么？" + text[:20])["input_ids"]
                response = tokenizer(text[20:30], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                documents.append((prompt + response, [IGNORE_INDEX] * len(prompt) + response, 1))
        self.rows, row, used = [], [], 0
        for doc in documents:
            if len(doc[0]) > width:
                continue
            if used + len(doc[0]) > width:
                self.rows.append(row)
                row, used = [], 0
            row.append(doc)
            used += len(doc[0])
            if len(self.rows) == rows:
                break

    def _loader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=self.batch_size,
                          collate_fn=lambda rows: contract_batch(rows, self.width, self.tokenizer.pad_token_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


@pytest.fixture()
def tiny_config(tiny_llama_config) -> dict:
    """``model.config`` for PandaLM: the session's tiny LlamaConfig as keyword arguments."""
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]
    return {key: getattr(tiny_llama_config, key) for key in keys}


@pytest.fixture()
def contract_datamodule(tokenizer_dir) -> ContractDataModule:
    return ContractDataModule(str(tokenizer_dir))
