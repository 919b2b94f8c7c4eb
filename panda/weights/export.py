"""Training checkpoint → Hugging Face model directory (what evaluation, serving and ``delta-make`` read).

A Lightning checkpoint of :class:`panda.model.PandaLM` holds the model under ``state_dict`` with keys
``model.<hf key>`` (``model.base_model.model.<hf key>`` with LoRA, peft's wrapping) and the module's init arguments
under ``hyper_parameters`` (``pretrained``, ``config``, ``lora``, …). A DeepSpeed run saves a directory of ZeRO
shards instead; DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` consolidates it.

One copy of the model, at most: the checkpoint is opened with ``torch.load(mmap=True, weights_only=True)``, the
model skeleton is built with empty (meta) parameters, and ``load_state_dict(assign=True)`` makes the checkpoint's
own tensors the model's parameters — nothing is allocated twice. Adapter-only LoRA checkpoints (PandaLM's default,
``lora.save_adapters_only``) load the body from ``pretrained`` instead, once. LoRA adapters are then merged with
peft's ``merge_and_unload`` (``lora_mode: merge``) or written as a peft adapter directory (``lora_mode: adapters``).

Pickles are only ever read with ``weights_only=True``; Panda's own plain config dataclasses (``LoraSettings``,
``CorpusSource``) are allow-listed because Lightning stores them in ``hyper_parameters``. Anything else is refused
with the name of the class unless ``trust_pickle`` says the file is yours. DeepSpeed's consolidation unpickles
fully, so a ZeRO directory is first checked file by file with the safe loader.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch

from panda.data.chat_format import CHAT_FORMAT_KEY, ChatFormat, chat_template, template_mismatch
from panda.progress import progress
from panda.weights.shards import WeightFileError, atomic_directory

LoraMode = Literal["merge", "adapters"]
ExportDtype = Literal["auto", "float32", "bfloat16", "float16"]
MODEL_PREFIX = "model."


PANDA_GLOBALS = (("panda.model.lora", "LoraSettings"), ("panda.data.sources", "CorpusSource"))
"""Panda's plain config dataclasses, which Lightning pickles into ``hyper_parameters``."""
DEEPSPEED_GLOBALS = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"), ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"), ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
)
"""Plain data classes (an enum, a dataclass, loss-scale state) in DeepSpeed's ZeRO optimizer-state files."""


def _importable(names: tuple[tuple[str, str], ...]) -> list:
    allowed = []
    for module, name in names:
        try:
            allowed.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return allowed


def safe_load(path: Path, *, trust_pickle: bool = False, mmap: bool = True,
              allow: tuple[tuple[str, str], ...] = PANDA_GLOBALS) -> dict:
    """``torch.load`` with ``weights_only=True`` and only the ``allow``-listed classes; errors name the file."""
    if trust_pickle:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    try:
        with torch.serialization.safe_globals(_importable(allow)):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling and zip errors come in many types
        message = str(error)
        if "Unsupported global" in message:
            allowed = {f"{module}.{name}" for module, name in allow}
            refused = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
            raise WeightFileError(f"{path}: refusing to unpickle {', '.join(refused)} (only tensors and plain data "
                                  "are read safely); if you produced this checkpoint yourself, pass --trust_pickle "
                                  "true") from None
        raise WeightFileError(f"{path}: cannot read checkpoint (truncated or not a PyTorch file?): "
                              f"{message.splitlines()[0] if message else type(error).__name__}") from None


@dataclasses.dataclass
class TrainingCheckpoint:
    """What export needs from a checkpoint: the module's weights (keys as ``PandaLM.state_dict`` names them) and
    its init arguments; ``data`` holds the data module's init arguments when Lightning saved them; ``extra`` the
    checkpoint's other plain entries Panda reads (the chat format, under ``panda_chat_format``)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    hparams: dict
    data: dict
    extra: dict = dataclasses.field(default_factory=dict)


def _extra(checkpoint: dict) -> dict:
    return {key: checkpoint[key] for key in (CHAT_FORMAT_KEY,) if key in checkpoint}


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> TrainingCheckpoint:
    """Read a Lightning ``.ckpt`` file or a DeepSpeed ZeRO checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if path.is_file():
        checkpoint = safe_load(path, trust_pickle=trust_pickle)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise WeightFileError(f"{path}: not a Lightning checkpoint (no 'state_dict' key)")
        return TrainingCheckpoint(path, checkpoint["state_dict"], dict(checkpoint.get("hyper_parameters") or {}),
                                  dict(checkpoint.get("datamodule_hyper_parameters") or {}), _extra(checkpoint))
    return _read_zero_checkpoint(path, trust_pickle)


def _read_zero_checkpoint(path: Path, trust_pickle: bool) -> TrainingCheckpoint:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    latest = path / "latest"
    tag = latest.read_text().strip() if latest.is_file() else None
    tag_dir = path / tag if tag else path
    model_states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    if not model_states:
        raise WeightFileError(f"{path}: not a DeepSpeed checkpoint (no 'latest' file, no mp_rank_00_model_states.pt)")
    if not trust_pickle:  # DeepSpeed unpickles with weights_only=False: vet every file with the safe loader first
        for file in sorted(tag_dir.glob("*.pt")):
            safe_load(file, allow=PANDA_GLOBALS + DEEPSPEED_GLOBALS)
    client_state = safe_load(model_states[0], trust_pickle=True)
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    state_dict = {key.removeprefix("_forward_module."): value for key, value in state_dict.items()}
    return TrainingCheckpoint(path, state_dict, dict(client_state.get("hyper_parameters") or {}),
                              dict(client_state.get("datamodule_hyper_parameters") or {}), _extra(client_state))


def _lora_settings(hparams: dict):
    from panda.model.lora import LoraSettings

    lora = hparams.get("lora")
    if lora is None or isinstance(lora, LoraSettings):
        return lora
    if isinstance(lora, dict):
        fields = {field.name for field in dataclasses.fields(LoraSettings)}
        return LoraSettings(**{key: value for key, value in lora.items() if key in fields})
    raise WeightFileError(f"hyper_parameters['lora'] is {type(lora).__name__}; expected LoraSettings or a dict")


def build_model(checkpoint: TrainingCheckpoint, *, pretrained: str | None = None):
    """The Hugging Face model (a peft model when LoRA was trained) holding the checkpoint's weights.

    Args:
        checkpoint: From :func:`read_checkpoint`.
        pretrained: The base model directory, when it moved since training (default: ``hparams['pretrained']``).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from panda.model.lora import add_lora

    hparams = checkpoint.hparams
    pretrained = pretrained or hparams.get("pretrained")
    if pretrained is not None and not (Path(pretrained) / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint.path} was trained from model.pretrained={pretrained!r}, which has no "
                                "config.json here; pass --pretrained with the base model's current directory")
    if pretrained is not None:  # the order PandaLM builds its model in: pretrained wins over config
        config = AutoConfig.from_pretrained(pretrained, trust_remote_code=False)
    elif hparams.get("config") is not None:
        config = LlamaConfig(**hparams["config"])
    else:
        raise WeightFileError(f"{checkpoint.path}: hyper_parameters name neither 'pretrained' nor 'config'; is this a "
                              "PandaLM checkpoint?")
    lora = _lora_settings(hparams)
    state = {}
    for key, value in checkpoint.state_dict.items():
        if not key.startswith(MODEL_PREFIX):
            raise WeightFileError(f"{checkpoint.path}: state_dict key {key!r} is outside the module's 'model.' "
                                  "(a PandaLM checkpoint keeps the Hugging Face model at .model)")
        state[key[len(MODEL_PREFIX):]] = value

    empty = lora is None or not lora.save_adapters_only  # the checkpoint holds every weight
    if empty:
        with init_empty_weights(include_buffers=False):  # meta parameters (no memory); rotary buffers stay real
            model = AutoModelForCausalLM.from_config(config, dtype=_state_dtype(state))
            model = add_lora(model, lora) if lora is not None else model
    elif pretrained is None:
        raise WeightFileError(f"{checkpoint.path} holds LoRA adapters only and names no pretrained base")
    else:  # adapters only: the frozen body comes from the base model, loaded once
        model = add_lora(AutoModelForCausalLM.from_pretrained(pretrained, config=config, dtype="auto"), lora)
    missing, unexpected = _load(model, state, assign=empty)
    if unexpected:
        raise WeightFileError(f"{checkpoint.path}: tensor model.{unexpected[0]} fits no parameter of the model "
                              f"({len(unexpected)} such tensors)")
    required = [k for k in missing if empty or ".lora_" in k or "modules_to_save" in k]
    if required:
        raise WeightFileError(f"{checkpoint.path}: no tensor for model.{required[0]} ({len(required)} missing)")
    meta = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if meta:
        raise WeightFileError(f"{checkpoint.path}: parameter model.{meta[0]} got no weights ({len(meta)} such)")
    return model


def _state_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _load(model, state: dict[str, torch.Tensor], *, assign: bool) -> tuple[list[str], list[str]]:
    result = model.load_state_dict(state, strict=False, assign=assign)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.tie_weights()
    return list(result.missing_keys), list(result.unexpected_keys)


def _find_tokenizer(checkpoint: TrainingCheckpoint, tokenizer: str | None, pretrained: str | None) -> str:
    candidates = [tokenizer, checkpoint.hparams.get("tokenizer_dir"), checkpoint.data.get("tokenizer"),
                  pretrained or checkpoint.hparams.get("pretrained")]
    for candidate in candidates:
        if candidate and Path(candidate, "tokenizer_config.json").is_file():
            return str(candidate)
    if tokenizer:
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer_config.json there")
    raise FileNotFoundError(f"{checkpoint.path}: cannot tell which tokenizer the model was trained with (neither the "
                            "data module's 'tokenizer' nor the pretrained directory has one); pass --tokenizer")


def write_tokenizer(tokenizer, output: Path, chat_format: ChatFormat) -> None:
    """Save ``tokenizer`` with the model's chat format as ``chat_template`` in ``tokenizer_config.json``.

    The template renders the ids our data pipeline trains on (:mod:`panda.data.chat_format`); it is checked on
    probe conversations first, and a tokenizer that cannot reproduce them (a legacy conversion whose dummy prefix
    follows every special token) gets a warning, since ``apply_chat_template`` would then prompt it differently.
    """
    import warnings

    template = chat_template(chat_format, tokenizer)
    mismatch = template_mismatch(chat_format, tokenizer, template)
    if mismatch:
        warnings.warn(f"{output}: the chat_template does not reproduce the training ids with this tokenizer "
                      f"({mismatch}); panda generate/chat prompt correctly, other tools may not", stacklevel=2)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(output)
    config_path = output / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template  # in tokenizer_config.json itself, where servers look for it
    config[CHAT_FORMAT_KEY] = chat_format.as_dict()
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (output / "chat_template.jinja").unlink(missing_ok=True)  # one copy: the config's


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, tokenizer: str | None = None,
                      pretrained: str | None = None, lora_mode: LoraMode = "merge", dtype: ExportDtype = "auto",
                      max_shard_size: str = "2GB", trust_pickle: bool = False, overwrite: bool = False) -> Path:
    """Export a PandaLM training checkpoint as a Hugging Face model directory.

    Args:
        checkpoint: A Lightning ``.ckpt`` file or a DeepSpeed checkpoint directory.
        output: The directory to create: config.json, generation_config.json, sharded safetensors, tokenizer
            (appears only when complete).
        tokenizer: Tokenizer directory to include (default: the data module's ``tokenizer``, else ``pretrained``).
        pretrained: The base model directory if it moved since training (LoRA adapter-only checkpoints need it).
        lora_mode: ``merge`` folds LoRA adapters into the weights (a plain LLaMA); ``adapters`` writes a peft adapter
            directory whose ``base_model_name_or_path`` is the base model.
        dtype: Weight dtype of the export; ``auto`` keeps the checkpoint's.
        max_shard_size: Largest safetensors shard, e.g. ``2GB``.
        trust_pickle: Unpickle arbitrary objects in the checkpoint (only for files you produced yourself).
        overwrite: Replace an existing ``output``.
    """
    from panda.data.tokenizer import check_vocabulary, load_tokenizer

    stages = progress(desc="export", total=3, unit="stage")
    stages.set_postfix_str(f"reading {Path(checkpoint).name}")
    training = read_checkpoint(checkpoint, trust_pickle=trust_pickle)
    stages.update()
    tokenizer_dir = _find_tokenizer(training, tokenizer, pretrained)
    stages.set_postfix_str("building the model")
    model = build_model(training, pretrained=pretrained)
    stages.update()
    stages.set_postfix_str(f"writing {output}")
    is_lora = _lora_settings(training.hparams) is not None
    if dtype != "auto":
        model = model.to(getattr(torch, dtype))
    loaded_tokenizer = load_tokenizer(tokenizer_dir, fill_pad=False)  # written back as stored (stock: no pad)
    try:
        check_vocabulary(model.get_input_embeddings().weight.shape[0], loaded_tokenizer,
                         model=f"the model in {training.path}", tokenizer_name=f"tokenizer {tokenizer_dir}")
    except ValueError as error:
        raise WeightFileError(f"{error}; pass the tokenizer it was trained with") from None

    with atomic_directory(output, overwrite=overwrite) as staging:
        if is_lora and lora_mode == "adapters":
            base = pretrained or training.hparams.get("pretrained")
            if base is None:
                raise WeightFileError(f"{training.path}: the LoRA base was built from model.config, so adapters alone "
                                      "cannot be loaded anywhere; export with --lora_mode merge")
            model.peft_config["default"].base_model_name_or_path = str(base)
            model.save_pretrained(staging)
        else:
            if is_lora:
                model = model.merge_and_unload()
            model.config.use_cache = True
            model.save_pretrained(staging, max_shard_size=max_shard_size)
            if not (staging / "generation_config.json").is_file():
                model.generation_config.save_pretrained(staging)
        write_tokenizer(loaded_tokenizer, staging, ChatFormat.from_stored(training.extra.get(CHAT_FORMAT_KEY)))
        (staging / "panda_export.json").write_text(json.dumps(
            {"checkpoint": str(training.path), "lora_mode": lora_mode if is_lora else None, "dtype": dtype,
             "tokenizer": tokenizer_dir}, indent=2) + "\n", encoding="utf-8")
    stages.update()
    stages.close()
    return Path(output)
