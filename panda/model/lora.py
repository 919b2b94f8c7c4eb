"""LoRA adapters (through peft) and the embedding-only mode: which parameters of the LLaMA train.

Full fine-tuning of a 7B model needs ZeRO and 16 GPUs; LoRA trains low-rank adapters beside frozen projections,
and peft does the work (wrapping, saving adapters, merging). The embedding-only mode is the first stage after a
vocabulary extension (``python -m panda.weights extend-vocab``): only ``embed_tokens`` and ``lm_head`` learn the
new rows while the transformer body stays frozen.

With LoRA, checkpoints keep only what trains (the adapters, and any ``modules_to_save``) — a few MB instead of
the 13 GB body, which is rebuilt from ``model.pretrained`` when the checkpoint is loaded. :func:`merged_copy`
gives a plain ``LlamaForCausalLM`` with the adapters folded in, for export.

**QLoRA** (``lora.quantize: nf4``, the reference's recipe for 33B/65B): the frozen body is loaded in 4-bit NormalFloat
by bitsandbytes through transformers' ``BitsAndBytesConfig`` (double quantisation, bf16 compute), the adapters train
in full precision (peft's ``prepare_model_for_kbit_training``). A 13B body then takes ≈7 GB instead of 26 GB.
bitsandbytes is the optional extra ``pip install '.[qlora]'``; where it is missing or cannot run the run stops at
start with one line. ZeRO-3 partitions weights, which 4-bit tensors cannot be: refused naming the key (ZeRO-1/2 and
DDP work). A merged export dequantises the body to ``export``'s dtype after peft folds the adapters in (peft merges
into the 4-bit weights, so the merged model carries the body's quantisation error, as every QLoRA merge does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel

from panda.errors import ConfigError, UserError

Trainable = Literal["all", "embeddings"]

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass
class LoraSettings:
    """LoRA hyperparameters, as written under ``model.init_args.lora`` in YAML.

    Args:
        r: Rank of the adapter matrices.
        alpha: Scaling numerator; the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter input.
        target_modules: Names of the linear layers that get adapters (LLaMA: ``q_proj``, ``k_proj``, ``v_proj``,
            ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).
        modules_to_save: Whole modules trained and saved beside the adapters (e.g. ``embed_tokens`` and
            ``lm_head`` after a vocabulary extension).
        save_adapters_only: Keep only the trained parameters in checkpoints (the frozen body comes back from
            ``model.pretrained``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    modules_to_save: list[str] = field(default_factory=list)
    save_adapters_only: bool = True
    quantize: Literal["none", "nf4"] = "none"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True


def quantized_load_kwargs(settings: LoraSettings | None) -> dict:
    """``from_pretrained`` keyword arguments for a QLoRA body (empty without ``quantize``).

    Raises:
        UserError: bitsandbytes is not installed or cannot run here, in one line naming ``model.lora.quantize``.
    """
    if settings is None or settings.quantize == "none":
        return {}
    key = f"model.init_args.lora.quantize={settings.quantize}"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"{key} needs bitsandbytes, which is not installed: pip install '.[qlora]'") from None
    except Exception as error:  # a binary without a backend for this machine raises at import
        raise UserError(f"{key}: bitsandbytes cannot run here ({str(error).splitlines()[0]})") from None
    from transformers import BitsAndBytesConfig

    kwargs = {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, settings.compute_dtype))}
    if torch.cuda.is_available():  # each rank quantises onto its own GPU (bitsandbytes quantises on placement)
        import os

        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return kwargs


def refuse_partitioned_4bit(settings: LoraSettings | None, zero_stage: int | None) -> None:
    """ZeRO-3 shards every weight across ranks; bitsandbytes' packed 4-bit tensors cannot be sharded."""
    if settings is not None and settings.quantize != "none" and zero_stage == 3:
        raise ConfigError(f"trainer.strategy.init_args.stage=3 with model.init_args.lora.quantize={settings.quantize}:"
                          " ZeRO-3 partitions the weights and 4-bit weights cannot be partitioned; use stage 1 or 2, "
                          "or DDP")


def add_lora(model: PreTrainedModel, settings: LoraSettings):
    """Wrap ``model`` in a peft ``PeftModel`` whose only trainable parameters are the adapters.

    Raises:
        ValueError: when a target module name matches no layer of the model.
    """
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in [*settings.target_modules, *settings.modules_to_save] if m not in names]
    if missing:
        raise ValueError(
            f"model.lora: {missing} match no module of {type(model).__name__}; "
            "expected names such as q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, embed_tokens, "
            "lm_head"
        )
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), modules_to_save=list(settings.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    if settings.quantize != "none":
        from peft import prepare_model_for_kbit_training

        # norms and embeddings to fp32, inputs requiring grad; checkpointing stays PandaLM's choice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, config)


def train_embeddings_only(model: PreTrainedModel) -> None:
    """Freeze everything except the input embedding and the output head."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for parameter in module.parameters():
            parameter.requires_grad_(True)


def trainable_state_dict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` (keys as ``module.state_dict()`` names them) that belong to trained tensors."""
    trained = {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    return {key: value for key, value in state_dict.items() if key in trained}


def merged_copy(model) -> PreTrainedModel:
    """A plain Hugging Face model with the LoRA adapters folded into the weights; ``model`` is left untouched.

    ``model`` may also be a plain model (no adapters), which is copied as is. The copy needs as much memory as
    the model.
    """
    duplicate = copy.deepcopy(model)
    if hasattr(duplicate, "merge_and_unload"):
        duplicate = duplicate.merge_and_unload()
    if getattr(duplicate, "is_loaded_in_4bit", False):  # QLoRA: a plain model again, in the compute dtype
        duplicate = duplicate.dequantize()
    for parameter in duplicate.parameters():
        parameter.requires_grad_(True)
    return duplicate
