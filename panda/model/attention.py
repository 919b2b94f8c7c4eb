"""Keep packed documents apart inside the model, at a cost that follows the documents, not the row.

A packed row holds several documents (see the drawing in :mod:`panda.data.packing`). ``position_ids`` restart at
0 where each document starts, which fixes the rotary positions; attention additionally has to stop at document
boundaries. Computing the whole (T×T) causal attention and masking what crosses a boundary is exact but wasteful:
on the demo mix at 2048 tokens only about a quarter of a row's causal pairs lie inside one document. The paths,
selected by ``model.attn_implementation``::

    row         [ d0 d0 d0 | d1 d1 | d2 d2 d2 d2 | pad pad ]
    position     0  1  2    0  1    0  1  2  3    0   1       a document starts where position == 0
    work         ∑ Lᵢ²/2 — three small causal triangles (and the padding tail's) instead of one T²/2 triangle

- ``document_sdpa`` (registered here; any device, the CPU default): each document's causal attention runs as its
  own ``scaled_dot_product_attention(is_causal=True)`` call on a slice of the flattened ``B·T`` tokens.
  Documents are cut with ``split`` (whose backward is one concatenation) rather than indexed one by one (whose
  backward writes a full-size zero gradient per slice).
- ``varlen`` (registered here; CUDA, bf16/fp16; the GPU default): PyTorch's own flash-attention variable-length
  kernel (``torch.nn.attention.varlen.varlen_attn``) over the same boundaries — no extra package.
- ``flash_attention_2``: transformers' integration of the ``flash-attn`` package (``pip install '.[flash]'``), fed
  the same boundaries (``cu_seq_lens_q/k``, ``max_length_q/k``), which transformers forwards to the kernel.
- ``flex_attention``: PyTorch's ``flex_attention`` with a document-causal ``BlockMask`` built here; blocks outside
  every document are skipped. Compiled by transformers; PyTorch 2.13 has no CPU backward for it.
- ``sdpa`` / ``eager``: one dense (B, 1, T, T) mask, document-equal AND causal — the stock kernels, kept as the
  exactness reference and for hardware where nothing else runs.

The boundaries are the cumulative document lengths over the flattened tokens, computed once per batch from the
position ids (transformers' own helper) and always passed explicitly (transformers infers them by itself for the
flash kernels only at batch size 1). Packed calls of the registered paths also get an empty 4D mask, so that
transformers does not build the dense (B, 1, T, T) mask it would otherwise derive from the position ids. Unpacked
calls (generation, scoring with a 2D padding mask) reach the registered functions without boundaries and run
stock SDPA with transformers' usual mask.

The mask *form* a dense kernel consumes is decided in one place, :func:`kernel_mask` (used by the model and by
log-likelihood scoring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from panda.data.collate import document_ids

AttnImplementation = Literal["auto", "document_sdpa", "varlen", "flash_attention_2", "flex_attention", "sdpa",
                             "eager"]
DOCUMENT_SDPA, VARLEN = "document_sdpa", "varlen"
BOUNDARY_IMPLEMENTATIONS = (DOCUMENT_SDPA, VARLEN, "flash_attention_2")
"""Paths fed the documents' boundaries (``cu_seq_lens_*``) instead of a mask."""
MASK_IMPLEMENTATIONS = ("eager", "sdpa")
"""Stock kernels fed one dense 4D mask."""
SETTING = "model.attn_implementation"


def kernel_mask(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The form of a dense ``(B, 1, Q, K)`` attention mask that ``attn_implementation`` consumes.

    transformers 5 passes a 4D mask through untouched, so its form must be the kernel's: ``eager`` *adds* it to
    the scores (additive float, the dtype's minimum where masked — a bool mask would add 0/1 and mask nothing);
    SDPA on CPU is faster with a ready additive mask (it would turn a bool mask into one in every layer); SDPA on
    other devices takes the bool mask as is (True = may attend).

    Args:
        allowed: Bool ``(B, 1, Q, K)``, True where the query may attend the key. Every query row must allow at
            least one key.
        attn_implementation: ``eager`` or ``sdpa`` (or a registered path that falls back to SDPA).
        dtype: Dtype of the attention scores (the model's compute dtype).
    """
    if attn_implementation == "eager" or allowed.device.type == "cpu":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def scores_dtype(parameter_dtype: torch.dtype, device_type: str) -> torch.dtype:
    """Dtype attention scores are computed in: the autocast dtype when autocast is on, else the weights'."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else parameter_dtype


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask (B, 1, T, T): query t may attend key s iff s ≤ t and both lie in the same document.

    A document starts where ``position_ids == 0``; its number is ``cumsum(position_ids == 0)``.
    """
    documents = document_ids(position_ids)  # (B, T)
    same_document = documents[:, :, None] == documents[:, None, :]  # (B, T, T)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()  # (T, T)
    return (same_document & causal)[:, None]  # (B, 1, T, T)


def document_block_mask(position_ids: torch.Tensor):
    """A flex-attention ``BlockMask`` allowing what :func:`block_causal_mask` allows; empty blocks are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    documents = document_ids(position_ids)  # (B, T)

    def same_document_causal(b, h, q, kv):
        return (documents[b, q] == documents[b, kv]) & (q >= kv)

    batch, length = position_ids.shape
    return create_block_mask(same_document_causal, batch, None, length, length, device=position_ids.device)


def packed_forward_kwargs(batch: Mapping[str, torch.Tensor], attn_implementation: str, *,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``LlamaForCausalLM.forward`` so that no token attends across documents.

    Args:
        batch: A batch in the BATCH CONTRACT (``input_ids`` and ``position_ids`` are used).
        attn_implementation: The model's ``config._attn_implementation``.
        dtype: Dtype of the attention scores, for the additive masks of :func:`kernel_mask`.

    Returns:
        ``input_ids`` and ``position_ids`` (B, T); for eager/sdpa a 4D ``attention_mask``; for flex a
        ``BlockMask``; for the boundary paths ``cu_seq_lens_q/k`` and ``max_length_q/k``. The logits keep the
        batch's (B, T) shape. Labels are not included: the module computes the loss itself.
    """
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}")
    kwargs = {"input_ids": input_ids, "position_ids": position_ids}
    if attn_implementation in MASK_IMPLEMENTATIONS:
        kwargs["attention_mask"] = kernel_mask(block_causal_mask(position_ids), attn_implementation, dtype)
    elif attn_implementation in BOUNDARY_IMPLEMENTATIONS or "flash" in attn_implementation:
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (cu_seq_lens_q, cu_seq_lens_k), (max_length_q, max_length_k) = prepare_fa_kwargs_from_position_ids(
            position_ids)  # boundaries over the flattened (B·T,) tokens: every row and document starts at 0
        kwargs.update(cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k,
                      max_length_q=int(max_length_q), max_length_k=int(max_length_k))
        if attn_implementation in REGISTERED_IMPLEMENTATIONS:
            kwargs["attention_mask"] = _boundaries_only(input_ids)
    elif attn_implementation == "flex_attention":
        kwargs["attention_mask"] = document_block_mask(position_ids)
    else:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not supported for packed batches; use "
                         f"one of {(*BOUNDARY_IMPLEMENTATIONS, 'flex_attention', *MASK_IMPLEMENTATIONS)}")
    return kwargs


# ------------------------------------------------------------------------------------ registered attention paths
REGISTERED_IMPLEMENTATIONS = (DOCUMENT_SDPA, VARLEN)


def _boundaries_only(input_ids: torch.Tensor) -> torch.Tensor:
    """An empty 4D ``attention_mask`` (B, 1, 0, 0) for a packed call of a registered path.

    transformers returns a 4D mask as it is; without one it would build a dense (B, 1, T, T) document mask from
    the position ids in every forward that the boundaries make useless. Being empty, it cannot be mistaken for a
    real mask: a kernel handed it fails on its shape.
    """
    return input_ids.new_empty((input_ids.shape[0], 1, 0, 0), dtype=torch.bool)


def _flattened(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """(B, H, T, D) projections → (B·T, H, D); free, since LLaMA's projections are (B, T, H, D) transposed."""
    return tuple(x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]) for x in (query, key, value))


def document_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each document's own slice of the flattened batch (see module docstring)."""
    if cu_seq_lens_q is None:  # not a packed call: stock SDPA with transformers' mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, dim = query.shape
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    lengths = cu_seq_lens_q.diff().tolist()
    pieces = zip(*(x.split(lengths) for x in _flattened(query, key, value)))  # per document: (L, H, D) × 3
    outputs = [F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], dropout_p=dropout, is_causal=True,
                                              scale=scaling)[0].transpose(0, 1)
               for q, k, v in pieces]  # (L, H, D) each; 4D (1, H, L, D) inputs, as CPU's flash kernel needs
    return torch.cat(outputs).view(batch, length, heads, dim), None


def varlen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                   **kwargs) -> tuple[torch.Tensor, None]:
    """PyTorch's flash-attention variable-length kernel over the documents (CUDA, bf16/fp16; no dropout)."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError(f"{SETTING}=varlen has no attention dropout; set attention_dropout to 0 or use "
                         "document_sdpa")
    from torch.nn.attention import varlen

    batch, heads, length, dim = query.shape
    q, k, v = _flattened(query, key, value)  # (B·T, H, D), (B·T, H_kv, D)
    cu = cu_seq_lens_q.to(torch.int32)
    out = varlen.varlen_attn(q, k, v, cu, cu, max_length_q, max_length_q, scale=scaling, window_size=(-1, 0),
                             enable_gqa=k.shape[1] != heads)  # (B·T, H, D)
    return out.view(batch, length, heads, dim), None


AttentionInterface.register(DOCUMENT_SDPA, document_sdpa_forward)
AttentionInterface.register(VARLEN, varlen_forward)
for _name in (DOCUMENT_SDPA, VARLEN):  # unpacked calls get stock SDPA masks
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, sdpa_mask)


# ---------------------------------------------------------------------------------------------- choosing a path
def resolve_attn_implementation(requested: str, device_type: str, precision: str = "32-true") -> str:
    """The path to use: ``requested``, or for ``auto`` the fastest exact one for the device and precision.

    ``auto`` is ``document_sdpa`` on CPU (per-document SDPA beats the dense mask and even plain causal SDPA);
    on CUDA in bf16/fp16 ``flash_attention_2`` when the flash-attn package is installed, else PyTorch's own
    ``varlen`` kernel; on CUDA in fp32 (flash kernels need half precision) ``document_sdpa``.

    Raises:
        ValueError: A kernel was requested that cannot run here (named with the setting and the fix).
    """
    half = not str(precision).startswith("32") and not str(precision).startswith("64")
    if requested == "auto":
        if device_type != "cuda" or not half:
            return DOCUMENT_SDPA
        return "flash_attention_2" if flash_attn_installed() else VARLEN
    if requested == "flash_attention_2" and not flash_attn_installed():
        raise ValueError(f"{SETTING}=flash_attention_2 needs the flash-attn package on a CUDA machine (pip install "
                         "'panda-llm[flash]'); use 'auto' or 'varlen' (PyTorch's own flash kernel) instead")
    if requested in ("flash_attention_2", VARLEN) and (device_type != "cuda" or not half):
        raise ValueError(f"{SETTING}={requested} runs on CUDA in bf16/fp16 only (here: {device_type}, precision "
                         f"{precision}); use 'auto' or 'document_sdpa'")
    return requested


def flash_attn_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def describe(attn_implementation: str) -> str:
    """One line for the log: which attention path runs and what it costs."""
    return {
        DOCUMENT_SDPA: "per-document causal SDPA (cost ∑ Lᵢ²)",
        VARLEN: "PyTorch flash varlen kernel (cost ∑ Lᵢ²)",
        "flash_attention_2": "flash-attn varlen kernel (cost ∑ Lᵢ²)",
        "flex_attention": "flex_attention with a document BlockMask (cost ≈ ∑ Lᵢ², block-rounded)",
        "sdpa": "SDPA with a dense document mask (cost T² per row)",
        "eager": "eager attention with a dense document mask (cost T² per row)",
    }.get(attn_implementation, attn_implementation)
