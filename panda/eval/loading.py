"""The model under evaluation and its tokenizer, loaded by Panda's one loader (:mod:`panda.weights.loading`).

Every layout that loader accepts works here (a Hugging Face directory, a peft adapter directory, a PandaLM
``.ckpt``, a DeepSpeed checkpoint folder); the model stays on CPU (Lightning moves it), in bfloat16 when a CUDA
device is present and float32 otherwise.

Every prompt is encoded with BOS prepended explicitly, like LLaMA's tokenizer does, so the ids do not depend on
a tokenizer's ``add_bos_token`` setting.
"""

from __future__ import annotations

from pathlib import Path

from panda.weights.loading import Dtype, load_pretrained, resolve_dtype
from panda.weights.loading import load_model as _load_model

__all__ = ["Dtype", "resolve_dtype", "encode", "encode_many", "load_model", "load_model_and_tokenizer"]


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with BOS first (SentencePiece's dummy prefix applies to each text's start)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with BOS first."""
    return encode_many(tokenizer, [text])[0]


def load_model(path: str | Path, *, dtype: Dtype = "auto", trust_remote_code: bool = False):
    """``(model, tokenizer_hint)``: the causal LM at ``path`` in eval mode on CPU, and a directory that may hold its
    tokenizer (or None)."""
    model, hint, _ = _load_model(path, dtype=dtype, trust_remote_code=trust_remote_code, device="cpu")
    return model, hint


def load_model_and_tokenizer(model: str | Path, tokenizer: str | Path | None = None, *, dtype: Dtype = "auto",
                             trust_remote_code: bool = False):
    """Model (see :func:`load_model`) and tokenizer (``tokenizer`` or the model's own)."""
    loaded = load_pretrained(model, tokenizer, dtype=dtype, trust_remote_code=trust_remote_code, device="cpu")
    return loaded.model, loaded.tokenizer
