"""The one checkpoint → model loader: whatever a user points Panda at becomes a ready model and its tokenizer.

Evaluation, ``panda generate`` and ``panda chat`` all load through :func:`load_pretrained`. ``model`` may be:

- a Hugging Face directory (``config.json`` + weights, e.g. an export or a stock LLaMA), loaded with
  ``AutoModelForCausalLM``;
- a peft adapter directory (``adapter_config.json``): its base (``base_model_name_or_path``, or ``pretrained``)
  plus the LoRA adapters, merged; ``adapters=`` does the same for a base directory given as ``model``;
- a Lightning ``.ckpt`` written by :class:`panda.model.PandaLM`, or a DeepSpeed ZeRO checkpoint folder (a
  ``latest`` file and ``*mp_rank_00_model_states.pt``, possibly under ``checkpoint/``): read with
  :func:`panda.weights.export.read_checkpoint`, which unpickles safely and keeps one copy of the weights (the
  checkpoint's own tensors become the parameters), then LoRA adapters are merged.

Weights end in bfloat16 on a GPU (as trained) and float32 on CPU unless ``dtype`` says otherwise. The tokenizer is
``tokenizer`` if given, else the model directory's, else the one the checkpoint was trained with; it must fit the
model's embedding. Every mistake a user can make here (unknown path or layout, no tokenizer, a tokenizer larger
than the vocabulary) raises a one-line :class:`panda.errors.UserError`.

The chat format the model was trained with (:mod:`panda.data.chat_format`) comes back too: from the checkpoint,
or from an export's ``tokenizer_config.json`` (``panda_chat_format``); a model without one (Panda's released
models, a stock LLaMA) gets the ``reference`` format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from panda.data.chat_format import CHAT_FORMAT_KEY, ChatFormat
from panda.errors import UserError

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class ModelLoadError(UserError, ValueError):
    """A model path, layout or tokenizer that cannot be used; the message names the path."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """No model at the path, or none of the known layouts."""


@dataclass
class LoadedModel:
    """A model ready for inference.

    Args:
        model: The Hugging Face causal LM, in eval mode, on ``device``.
        tokenizer: Its tokenizer.
        chat_format: The conversation layout it was trained with.
        source: What was loaded (the path given).
    """

    model: object
    tokenizer: object
    chat_format: ChatFormat
    source: str

    @property
    def context_length(self) -> int:
        """Longest sequence the model takes (``max_position_embeddings``)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def resolve_dtype(dtype: Dtype) -> torch.dtype:
    """``auto`` → bfloat16 when a CUDA device is present, float32 otherwise."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _is_zero_checkpoint(path: Path) -> bool:
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*mp_rank_00_model_states.pt"))
                              or (path / "checkpoint").is_dir())


def _from_hf_directory(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{path}: cannot load the model directory ({first})") from None


def _with_adapters(model, adapters: Path):
    from peft import PeftModel

    if not (adapters / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapters {adapters}: no adapter_config.json (expected a peft adapter directory)")
    return PeftModel.from_pretrained(model, str(adapters)).merge_and_unload()


def _adapter_base(path: Path, pretrained: str | None) -> Path:
    if pretrained:
        return Path(pretrained)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{path}: adapter_config.json names no base_model_name_or_path; pass --pretrained")
    return Path(base)


def _from_checkpoint(path: Path, pretrained: str | None, trust_pickle: bool):
    from panda.weights.export import _lora_settings, build_model, read_checkpoint
    from panda.weights.shards import WeightFileError

    try:
        checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
        model = build_model(checkpoint, pretrained=pretrained)
    except (WeightFileError, FileNotFoundError) as error:
        raise ModelLoadError(str(error)) from None
    if _lora_settings(checkpoint.hparams) is not None:
        model = model.merge_and_unload()
    return model, checkpoint


def _checkpoint_tokenizer(checkpoint, pretrained: str | None) -> str | None:
    for candidate in (checkpoint.data.get("tokenizer"), pretrained or checkpoint.hparams.get("pretrained")):
        if candidate and Path(candidate, "tokenizer_config.json").is_file():
            return str(candidate)
    return None


def stored_chat_format(tokenizer_dir: str | Path | None) -> ChatFormat | None:
    """The chat format an export recorded in its ``tokenizer_config.json``, or None."""
    if tokenizer_dir is None or not Path(tokenizer_dir, "tokenizer_config.json").is_file():
        return None
    config = json.loads(Path(tokenizer_dir, "tokenizer_config.json").read_text(encoding="utf-8"))
    return ChatFormat.from_stored(config[CHAT_FORMAT_KEY]) if CHAT_FORMAT_KEY in config else None


def load_model(path: str | Path, *, dtype: Dtype = "auto", pretrained: str | None = None,
               adapters: str | Path | None = None, trust_pickle: bool = False, trust_remote_code: bool = False,
               device: str | torch.device | None = None):
    """The causal LM at ``path`` (any layout of the module docstring), in eval mode.

    Returns:
        ``(model, tokenizer_hint, chat_format)``: the model, a directory that may hold its tokenizer (or None),
        and the chat format stored with it (or None).
    """
    path = Path(path)
    torch_dtype = resolve_dtype(dtype)
    chat_format = None
    if path.is_dir() and (path / "adapter_config.json").is_file():
        base = _adapter_base(path, pretrained)
        model = _with_adapters(_from_hf_directory(base, torch_dtype, trust_remote_code), path)
        hint = str(path) if (path / "tokenizer_config.json").is_file() else str(base)
    elif path.is_dir() and (path / "config.json").is_file():
        model = _from_hf_directory(path, torch_dtype, trust_remote_code)
        model = _with_adapters(model, Path(adapters)) if adapters else model
        hint = str(path)
    elif path.is_file() or _is_zero_checkpoint(path):
        model, checkpoint = _from_checkpoint(path, pretrained, trust_pickle)
        hint = _checkpoint_tokenizer(checkpoint, pretrained)
        stored = checkpoint.extra.get(CHAT_FORMAT_KEY)
        chat_format = ChatFormat.from_stored(stored) if stored is not None else None
    else:
        what = "does not exist" if not path.exists() else "is of no known layout"
        raise ModelNotFoundError(f"model {path} {what}: it is neither a Hugging Face directory (config.json), a peft "
                                 "adapter directory (adapter_config.json), a PandaLM .ckpt nor a DeepSpeed checkpoint "
                                 "folder (latest)")
    if adapters and not (path.is_dir() and (path / "config.json").is_file()):
        raise ModelLoadError(f"--adapters {adapters}: adapters apply to a Hugging Face base directory, not {path}")
    model = model.to(device=device or default_device(), dtype=torch_dtype)
    model.config.use_cache = True  # training checkpoints switch the KV cache off
    return model.eval(), hint, chat_format


def load_pretrained(model: str | Path, tokenizer: str | Path | None = None, *, dtype: Dtype = "auto",
                    pretrained: str | None = None, adapters: str | Path | None = None, trust_pickle: bool = False,
                    trust_remote_code: bool = False, device: str | torch.device | None = None,
                    chat_format: ChatFormat | str | None = None) -> LoadedModel:
    """Model, tokenizer and chat format from any supported layout (see the module docstring).

    Args:
        model: The model path.
        tokenizer: Tokenizer directory (default: the model's own, or the one its checkpoint names).
        dtype: Weight dtype; ``auto`` = bfloat16 on GPU, float32 on CPU.
        pretrained: The base model directory when it moved since training (LoRA checkpoints, adapter directories).
        adapters: A peft adapter directory to merge into the base directory ``model``.
        trust_pickle: Unpickle arbitrary objects in a checkpoint (only files you produced yourself).
        trust_remote_code: Let ``transformers`` run code shipped with a model directory.
        device: Where the model goes (default: CUDA when present).
        chat_format: Override the stored chat format (``reference`` or ``roles``).
    """
    from panda.data.tokenizer import check_vocabulary, load_tokenizer

    hf_model, hint, stored = load_model(model, dtype=dtype, pretrained=pretrained, adapters=adapters,
                                        trust_pickle=trust_pickle, trust_remote_code=trust_remote_code,
                                        device=device)
    tokenizer_path = tokenizer or hint
    if tokenizer_path is None or not Path(tokenizer_path, "tokenizer_config.json").is_file():
        where = f"--tokenizer {tokenizer}: no tokenizer_config.json there" if tokenizer else \
            f"no tokenizer found for {model}; pass the tokenizer directory (--tokenizer)"
        raise ModelLoadError(where)
    try:
        loaded_tokenizer = load_tokenizer(tokenizer_path)
    except (OSError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise ModelLoadError(f"tokenizer {tokenizer_path}: {str(error).splitlines()[0]}") from None
    check_vocabulary(hf_model.get_input_embeddings().weight.shape[0], loaded_tokenizer, model=f"model {model}",
                     tokenizer_name=f"tokenizer {tokenizer_path}")
    if chat_format is not None:
        resolved = ChatFormat.from_stored(chat_format)
    else:
        resolved = stored or stored_chat_format(tokenizer_path) or ChatFormat()
    return LoadedModel(hf_model, loaded_tokenizer, resolved, str(model))
