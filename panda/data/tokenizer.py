"""LLaMA-style SentencePiece tokenizers: train one on a corpus, save it where `transformers` loads it.

Real LLaMA tokenizers are SentencePiece BPE with byte fallback, split digits, a dummy prefix (``"你好"`` →
``[1, 29871, ...]``) and the identity normalizer. The demo and the tests train a small tokenizer with exactly
these options so the masking code is exercised on the same kind of tokenizer it meets in production.

transformers 5.x loads a SentencePiece model correctly only through ``from_pretrained(directory)`` (building
``LlamaTokenizer(vocab_file=...)`` directly yields a 3-token tokenizer), so :func:`save_tokenizer_dir` writes a
directory in the ``save_pretrained`` layout and :func:`load_tokenizer` always goes through ``from_pretrained``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, character_coverage: float = 0.9995,
                        num_threads: int = 2) -> bytes:
    """Train a LLaMA-style BPE SentencePiece model and return its serialized proto.

    Args:
        texts: Training sentences (one string each; newlines inside are kept as text).
        vocab_size: Number of pieces, special tokens included.
        character_coverage: Share of characters that get their own piece; the rest fall back to bytes.
        num_threads: Trainer threads.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=character_coverage,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, max_sentence_length=16384,
        minloglevel=2, num_threads=num_threads,
    )
    return model.getvalue()


def save_tokenizer_dir(sentencepiece_model: bytes, output_dir: str | Path, *, model_max_length: int = 2048) -> Path:
    """Write a SentencePiece model as a Hugging Face tokenizer directory (``tokenizer.json`` included).

    The tokenizer adds BOS (not EOS) like LLaMA's and pads on the right, which is what training batches want;
    generation code sets left padding explicitly.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tokenizer.model").write_bytes(sentencepiece_model)
    config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "padding_side": "right", "legacy": False, "model_max_length": model_max_length,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    load_tokenizer(output_dir).save_pretrained(output_dir)  # adds tokenizer.json so later loads skip conversion
    return output_dir


def train_tokenizer(texts: Iterable[str], output_dir: str | Path, vocab_size: int = 8000) -> Path:
    """Train a LLaMA-style tokenizer on ``texts`` and save it to ``output_dir`` (see module docstring)."""
    return save_tokenizer_dir(train_sentencepiece(texts, vocab_size), output_dir)


def load_tokenizer(path: str | Path):
    """Load a tokenizer directory (``save_pretrained`` layout) with BOS added and a pad token guaranteed."""
    from transformers import AutoTokenizer

    from panda.errors import UserError

    if not Path(path).is_dir():
        raise UserError(f"tokenizer {path}: no such directory (expected a save_pretrained tokenizer or model "
                        "directory; nothing is downloaded from the hub)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer at {path} has no pad token; add one (LLaMA checkpoints use '<pad>' at id 32000)")
    return tokenizer
