"""LLaMA-style SentencePiece tokenizers: train one on a corpus, save it where `transformers` loads it.

Real LLaMA tokenizers are SentencePiece BPE with byte fallback, split digits, a dummy prefix (``"你好"`` →
``[1, 29871, ...]``) and the identity normalizer. The demo and the tests train a small tokenizer with exactly
these options so the masking code is exercised on the same kind of tokenizer it meets in production.

transformers 5.x loads a SentencePiece model correctly only through ``from_pretrained(directory)`` (building
``LlamaTokenizer(vocab_file=...)`` directly yields a 3-token tokenizer), so :func:`save_tokenizer_dir` writes a
directory in the ``save_pretrained`` layout and :func:`load_tokenizer` always goes through ``from_pretrained``.

**Tokenizers without a pad token.** Stock ``llama-7b-hf`` ships ``tokenizer.model`` and a ``tokenizer_config.json``
with no ``pad_token`` (32000 ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, then byte and text pieces). Nothing here needs a
*trainable* pad embedding: a padded position gets label ``IGNORE_INDEX`` and is its own document for the attention
mask (see :mod:`panda.data.collate`), so whatever id fills it is never trained and never attended. When the
tokenizer has no pad token, :func:`load_tokenizer` therefore fills with an id the model already has —
:func:`fill_token_id`: ``</s>`` (LLaMA's id 2, what ``generate`` pads with too), else ``<unk>`` — sets it as the in-memory ``pad_token`` so every
consumer (collator, evaluation, generation) reads one value, and logs the choice once per directory. The files on
disk are never changed (an export keeps the stock layout: ``load_tokenizer(..., fill_pad=False)``). Reproducing the
reference's 32001-token vocabulary (``<pad>`` at id 32000) is ``panda weights add-pad`` (:mod:`panda.weights.vocab`).

:func:`check_vocabulary` is the one comparison of a model's embedding rows with a tokenizer, used by training,
export and evaluation.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from panda.errors import UserError

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
FILL_CANDIDATES = ("eos", "unk")
"""Special tokens, in order of preference, whose id fills padded positions of a tokenizer without a pad token."""

_ANNOUNCED: set[str] = set()


class VocabularyError(UserError, ValueError):
    """A model and a tokenizer that do not fit each other (or a tokenizer that cannot pad)."""


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, character_coverage: float = 0.9995,
                        num_threads: int = 2, pad_piece: bool = True) -> bytes:
    """Train a LLaMA-style BPE SentencePiece model and return its serialized proto.

    Args:
        texts: Training sentences (one string each; newlines inside are kept as text).
        vocab_size: Number of pieces, special tokens included.
        character_coverage: Share of characters that get their own piece; the rest fall back to bytes.
        num_threads: Trainer threads.
        pad_piece: Reserve id 3 for ``<pad>``; ``False`` gives LLaMA's own layout (``<unk>``, ``<s>``, ``</s>``,
            then the byte pieces from id 3, no pad piece).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=character_coverage,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID if pad_piece else -1, max_sentence_length=16384,
        minloglevel=2, num_threads=num_threads,
    )
    return model.getvalue()


def save_tokenizer_dir(sentencepiece_model: bytes, output_dir: str | Path, *, model_max_length: int = 2048,
                       pad_token: str | None = "<pad>") -> Path:
    """Write a SentencePiece model as a Hugging Face tokenizer directory (``tokenizer.json`` included).

    The tokenizer adds BOS (not EOS) like LLaMA's and pads on the right, which is what training batches want;
    generation code sets left padding explicitly. ``pad_token=None`` writes the stock ``llama-7b-hf`` config, which
    names no pad token.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tokenizer.model").write_bytes(sentencepiece_model)
    config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "padding_side": "right", "legacy": False, "model_max_length": model_max_length,
    }
    if pad_token is not None:
        config["pad_token"] = pad_token
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # adds tokenizer.json so later loads skip conversion
    load_tokenizer(output_dir, fill_pad=False).save_pretrained(output_dir)
    return output_dir


def train_tokenizer(texts: Iterable[str], output_dir: str | Path, vocab_size: int = 8000, *,
                    pad_token: bool = True) -> Path:
    """Train a LLaMA-style tokenizer on ``texts`` and save it to ``output_dir`` (see module docstring).

    ``pad_token=False`` gives the stock ``llama-7b-hf`` layout: no pad piece in ``tokenizer.model`` and no
    ``pad_token`` in ``tokenizer_config.json``.
    """
    model = train_sentencepiece(texts, vocab_size, pad_piece=pad_token)
    return save_tokenizer_dir(model, output_dir, pad_token="<pad>" if pad_token else None)


def load_tokenizer(path: str | Path, *, fill_pad: bool = True):
    """Load a tokenizer directory (``save_pretrained`` layout); without a pad token, pad with :func:`fill_token_id`.

    Args:
        path: The directory (a model directory holding the tokenizer files works too).
        fill_pad: Set the in-memory ``pad_token`` of a tokenizer that has none to the fill token (logged once per
            directory). ``False`` returns the tokenizer exactly as stored (for writing it back unchanged).
    """
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise UserError(f"tokenizer {path}: no such directory (expected a save_pretrained tokenizer or model "
                        "directory; nothing is downloaded from the hub)")
    if not any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise UserError(f"tokenizer {path}: no tokenizer.json, tokenizer.model or tokenizer_config.json in this "
                        "directory")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if fill_pad and tokenizer.pad_token_id is None:
        fill = fill_token_id(tokenizer, where=str(path))
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(fill)
        if str(path) not in _ANNOUNCED:
            _ANNOUNCED.add(str(path))
            from lightning.fabric.utilities.rank_zero import rank_zero_info

            rank_zero_info(f"tokenizer {path} has no pad token: padded positions hold id {fill} "
                           f"({tokenizer.pad_token!r}), with label -100 and attended by nothing (the model needs no "
                           "pad embedding; `panda weights add-pad` adds the reference's <pad> at a new id)")
    return tokenizer


def fill_token_id(tokenizer, *, where: str = "the tokenizer") -> int:
    """The id written on padded positions: the pad token's, else ``</s>``'s, else ``<unk>``'s (see module docstring).

    Raises :class:`VocabularyError` naming ``where`` when the tokenizer has none of the three.
    """
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    for name in FILL_CANDIDATES:
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            return int(token_id)
    raise VocabularyError(f"{where}: no pad, unk or eos token to fill padded positions with; set pad_token in its "
                     "tokenizer_config.json")


def check_vocabulary(rows: int, tokenizer, *, model: str = "the model", tokenizer_name: str = "the tokenizer") -> None:
    """Refuse a model whose embedding has no row for some id the tokenizer can emit (the one vocabulary check).

    A model with *more* rows than the tokenizer has tokens is fine (the reference's 32001-row Panda weights with a
    stock 32000-token tokenizer: row 32000 is simply never looked up).

    Args:
        rows: Rows of the model's input embedding.
        tokenizer: The loaded tokenizer.
        model: How to name the model in the message (a path or a config key).
        tokenizer_name: How to name the tokenizer in the message.
    """
    size = len(tokenizer)
    if rows >= size:
        return
    hint = ("extend the model first (`panda weights extend-vocab`) or use the model's own tokenizer")
    if size == rows + 1 and tokenizer.pad_token_id == rows:
        hint = (f"the tokenizer adds {tokenizer.pad_token!r} at id {rows} (the reference's 32001 vocabulary): "
                f"run `panda weights add-pad MODEL OUTPUT` on the model, or use a tokenizer without a pad token")
    raise VocabularyError(f"{model} has {rows} vocabulary rows but {tokenizer_name} has {size} tokens (ids up to "
                     f"{size - 1}); {hint}")
