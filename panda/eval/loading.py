"""Load the model under evaluation — a Hugging Face directory or a Panda training checkpoint — and its tokenizer.

Accepted ``model`` paths:

- a ``save_pretrained`` directory (``config.json`` + weights), loaded with ``AutoModelForCausalLM``; its tokenizer
  is read from the same directory unless another one is given;
- a Lightning checkpoint file (``*.ckpt``) written by :class:`panda.model.PandaLM`, loaded with
  ``PandaLM.load_from_checkpoint`` and unwrapped to its Hugging Face model (``.model``); the tokenizer path must
  be given (the checkpoint holds weights, not a tokenizer), unless the checkpoint's ``pretrained`` directory
  has one;
- a DeepSpeed checkpoint directory (``checkpoint/`` inside): consolidated to fp32 with Lightning's
  ``convert_zero_checkpoint_to_fp32_state_dict`` into a temporary file first, then as above.

``trust_remote_code`` is off unless asked for. On a GPU the weights are loaded in bfloat16 (as trained); on CPU in
float32.

Every prompt is encoded with BOS prepended explicitly, like LLaMA's tokenizer does, so the ids do not depend on
a tokenizer's ``add_bos_token`` setting.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


def resolve_dtype(dtype: Dtype) -> torch.dtype:
    """``auto`` → bfloat16 when a CUDA device is present, float32 otherwise."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with BOS first (SentencePiece's dummy prefix applies to each text's start)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with BOS first."""
    return encode_many(tokenizer, [text])[0]


def _load_panda_checkpoint(path: Path):
    try:
        from panda.model import PandaLM
    except ImportError as error:
        raise ImportError(f"loading the training checkpoint {path} needs panda.model.PandaLM, which is not "
                          "importable here; export the model with save_pretrained and pass that directory") from error
    module = PandaLM.load_from_checkpoint(str(path), map_location="cpu")
    model = module.merged_hf_model() if getattr(module, "lora", None) is not None else module.model
    return model, module.hparams.get("pretrained")


def load_model(path: str | Path, *, dtype: Dtype = "auto", trust_remote_code: bool = False):
    """The Hugging Face causal LM at ``path`` in eval mode, plus a directory that may hold its tokenizer.

    Returns:
        ``(model, tokenizer_hint)`` where ``tokenizer_hint`` is the HF directory the weights came from, or None.
    """
    path = Path(path)
    torch_dtype = resolve_dtype(dtype)
    if path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
        hint = str(path)
    elif path.is_dir() and (path / "checkpoint").is_dir():
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            converted = Path(tmp) / "model.ckpt"
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(converted))
            model, hint = _load_panda_checkpoint(converted)
        model = model.to(torch_dtype)
    elif path.is_file():
        model, hint = _load_panda_checkpoint(path)
        model = model.to(torch_dtype)
    else:
        raise FileNotFoundError(f"model {path} is neither a Hugging Face directory (with config.json), a DeepSpeed "
                                "checkpoint directory (with checkpoint/) nor a checkpoint file")
    return model.eval(), hint


def load_model_and_tokenizer(model: str | Path, tokenizer: str | Path | None = None, *, dtype: Dtype = "auto",
                             trust_remote_code: bool = False):
    """Model (see :func:`load_model`) and tokenizer (``tokenizer`` or the model's own directory)."""
    from panda.data.tokenizer import check_vocabulary, load_tokenizer

    hf_model, hint = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer_path = tokenizer or hint
    if tokenizer_path is None or not Path(tokenizer_path).is_dir():
        raise ValueError(f"no tokenizer for {model}: pass the tokenizer directory (model.init_args.tokenizer)")
    loaded = load_tokenizer(tokenizer_path)
    check_vocabulary(hf_model.get_input_embeddings().weight.shape[0], loaded, model=f"model {model}",
                     tokenizer_name=f"tokenizer {tokenizer_path}")
    return hf_model, loaded
