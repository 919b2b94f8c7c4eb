"""Keep packed documents apart inside the model: the forward kwargs that make attention block-diagonal.

A packed row holds several documents (see the drawing in :mod:`panda.data.packing`). ``position_ids`` restart at
0 where each document starts, which fixes the rotary positions; attention additionally has to stop at document
boundaries. How that is expressed depends on the attention kernel:

- ``eager`` / ``sdpa``: an explicit 4D ``(B, 1, T, T)`` mask, document-equal AND causal. transformers 5's
  ``masking_utils`` passes a user-given 4D mask through untouched, so its *form* must be what the kernel consumes:
  the eager kernel *adds* the mask to the attention scores (so it must be additive float: 0 where allowed, the
  dtype's minimum where not — a bool mask would add 0/1 and silently mask nothing), while
  ``torch.nn.functional.scaled_dot_product_attention`` takes a bool mask (True = may attend), the cheaper form.
- ``flash_attention_2`` (any ``flash*`` kernel): no T×T mask at all. The variable-length kernel takes the
  cumulative document lengths ``cu_seq_lens`` over the flattened ``B·T`` tokens, and transformers forwards them
  (with ``max_length``) from ``LlamaForCausalLM.forward`` down to the kernel. We compute them from
  ``position_ids`` with transformers' own helper. Relying on position ids alone is not enough: transformers only
  infers packing from position ids when the batch size is 1.
- ``flex_attention``: ``position_ids`` only; transformers builds the block mask from restarting position ids.

On a GPU prefer ``flash_attention_2``: SDPA with an explicit mask cannot use its flash kernel.

We build the eager/sdpa mask ourselves rather than rely on transformers' position-id detection so the behaviour
is written down here and tested, and does not change with a transformers upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from panda.data.collate import document_ids

MASK_IMPLEMENTATIONS = ("eager", "sdpa")


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask (B, 1, T, T): query t may attend key s iff s ≤ t and both lie in the same document.

    A document starts where ``position_ids == 0``; its number is ``cumsum(position_ids == 0)``.
    """
    documents = document_ids(position_ids)  # (B, T)
    same_document = documents[:, :, None] == documents[:, None, :]  # (B, T, T)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()  # (T, T)
    return (same_document & causal)[:, None]  # (B, 1, T, T)


def packed_forward_kwargs(batch: Mapping[str, torch.Tensor], attn_implementation: str, *,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``LlamaForCausalLM.forward`` so that no token attends across documents.

    Args:
        batch: A batch in the BATCH CONTRACT (``input_ids`` and ``position_ids`` are used).
        attn_implementation: The model's ``config._attn_implementation``.
        dtype: Dtype of the additive mask for ``eager`` (the attention scores' dtype; float32 is safe under
            autocast).

    Returns:
        ``input_ids`` and ``position_ids`` (B, T); for eager/sdpa a 4D ``attention_mask``; for flash kernels
        ``cu_seq_lens_q/k`` and ``max_length_q/k``. The logits keep the batch's (B, T) shape. Labels are not
        included: the module computes the loss itself.
    """
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}")
    kwargs = {"input_ids": input_ids, "position_ids": position_ids}
    if attn_implementation in MASK_IMPLEMENTATIONS:
        allowed = block_causal_mask(position_ids)  # (B, 1, T, T)
        if attn_implementation == "eager":
            kwargs["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        else:
            kwargs["attention_mask"] = allowed
    elif "flash" in attn_implementation:
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (cu_seq_lens_q, cu_seq_lens_k), (max_length_q, max_length_k) = prepare_fa_kwargs_from_position_ids(
            position_ids)  # boundaries over the flattened (B·T,) tokens: every row and document starts at 0
        kwargs.update(cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k,
                      max_length_q=int(max_length_q), max_length_k=int(max_length_k))
    elif attn_implementation != "flex_attention":
        raise ValueError(f"attn_implementation {attn_implementation!r} is not supported for packed batches; use "
                         f"one of {MASK_IMPLEMENTATIONS}, a flash-attention kernel or 'flex_attention'")
    return kwargs
