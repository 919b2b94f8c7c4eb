"""Rows of tokenized documents → the batch every training step consumes (the BATCH CONTRACT).

A *row* is one or more documents laid end to end (a packed row from :func:`panda.data.packing.pack`, or a
single document in the unpacked pad-to-max baseline). A *document* is a mapping with ``input_ids`` and
``labels`` (equal length, labels unshifted, as :func:`panda.data.tokenize.encode_example` makes them) and
``source_id`` (index into the data module's ``source_names``). The batch is a dict of ``(B, T)`` LongTensors:

==============  =========================================================================================
input_ids       the tokens; ``pad_id`` after the last document: the tokenizer's pad token, or for a tokenizer
                without one (stock LLaMA) an id the model already has (:func:`panda.data.tokenizer.fill_token_id`)
labels          the documents' labels; ``IGNORE_INDEX`` on padding
position_ids    0, 1, 2, … restarting at 0 where each document starts; the padding tail is one more run
                from 0 — so a document starts exactly where ``position_ids == 0``
attention_mask  1 on real tokens, 0 on padding (for counting useful tokens; the model's attention mask is
                built from ``position_ids``, see :mod:`panda.model.attention`)
source_ids      the document's ``source_id`` on each of its tokens, -1 on padding
==============  =========================================================================================

Padding is inert whatever id fills it: its labels are ``IGNORE_INDEX`` (never trained) and, being one more run of
``position_ids`` from 0, it is a document of its own, so the block-diagonal mask lets no real token attend to it
(and the real tokens' logits are the same as without it). A row of two documents padded to 8 with fill id ``f``::

    input_ids     d1 d1 d1 d2 d2  f  f  f        attention (query ↓, key →): d1 sees d1, d2 sees d2,
    labels        -  d1 d1 -  d2  -  -  -        padding sees only padding
    position_ids  0  1  2  0  1   0  1  2

``pad_to="max"`` makes every batch ``max_seq_length`` wide (fixed shapes: no recompilation, predictable
memory); ``"longest"`` pads only to the longest row of the batch, rounded up to ``pad_to_multiple_of``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from panda.constants import IGNORE_INDEX

BATCH_KEYS = ("input_ids", "labels", "position_ids", "attention_mask", "source_ids")

PAD_MULTIPLE = 8
"""With ``pad_to="longest"`` the data module rounds a batch's width up to a multiple of this (tensor-core shapes)."""


def pad_width(longest, multiple: int, max_seq_length: int):
    """The width of a batch whose longest row has ``longest`` tokens (an int or an array of them): rounded up to a
    multiple of ``multiple``, never beyond ``max_seq_length``. The one rounding rule, for collation and statistics."""
    return np.minimum(-(-longest // multiple) * multiple, max_seq_length)


class PackedCollator:
    """Collate rows of documents into the BATCH CONTRACT (see module docstring).

    Args:
        pad_id: Token id written on padding positions (:func:`panda.data.tokenizer.fill_token_id`).
        max_seq_length: Row capacity; a longer row is an error.
        pad_to: ``"max"`` pads every batch to ``max_seq_length``; ``"longest"`` to the batch's longest row.
        pad_to_multiple_of: With ``pad_to="longest"``, round the width up to a multiple of this (e.g. 8 for tensor
            cores); never beyond ``max_seq_length``.
    """

    def __init__(self, pad_id: int, max_seq_length: int, pad_to: Literal["max", "longest"] = "max",
                 pad_to_multiple_of: int = 1) -> None:
        if pad_to not in ("max", "longest"):
            raise ValueError(f"pad_to must be 'max' or 'longest', got {pad_to!r}")
        if max_seq_length < 1 or pad_to_multiple_of < 1:
            raise ValueError(f"max_seq_length ({max_seq_length}) and pad_to_multiple_of ({pad_to_multiple_of}) "
                             "must be positive")
        self.pad_id = pad_id
        self.max_seq_length = max_seq_length
        self.pad_to = pad_to
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_tokenizer(cls, tokenizer, max_seq_length: int, pad_to: Literal["max", "longest"] = "max",
                       pad_to_multiple_of: int = 1) -> PackedCollator:
        """A collator padding with the tokenizer's pad id, or its fill id when it has no pad token."""
        from panda.data.tokenizer import fill_token_id

        return cls(fill_token_id(tokenizer), max_seq_length, pad_to, pad_to_multiple_of)

    def __call__(self, rows: Sequence[Sequence[Mapping] | Mapping]) -> dict[str, torch.Tensor]:
        """Build the batch; each element of ``rows`` is a list of documents, or one document (unpacked mode)."""
        rows = [[row] if isinstance(row, Mapping) else list(row) for row in rows]
        lengths = [sum(len(document["input_ids"]) for document in row) for row in rows]
        for i, length in enumerate(lengths):
            if length > self.max_seq_length:
                raise ValueError(f"row {i} of the batch holds {length} tokens > max_seq_length="
                                 f"{self.max_seq_length}; pack and tokenize with the same max_seq_length")
        width = self.max_seq_length
        if self.pad_to == "longest":
            longest = max(lengths, default=1) or 1
            width = int(pad_width(longest, self.pad_to_multiple_of, self.max_seq_length))
        batch = {
            "input_ids": torch.full((len(rows), width), self.pad_id, dtype=torch.long),  # (B, T)
            "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
            "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "source_ids": torch.full((len(rows), width), -1, dtype=torch.long),
        }
        for b, row in enumerate(rows):
            start = 0
            for document in row:
                ids = torch.as_tensor(document["input_ids"], dtype=torch.long)
                labels = torch.as_tensor(document["labels"], dtype=torch.long)
                if ids.shape != labels.shape or ids.ndim != 1:
                    raise ValueError(f"row {b}: a document's input_ids {tuple(ids.shape)} and labels "
                                     f"{tuple(labels.shape)} must be 1-D and of equal length")
                end = start + len(ids)
                batch["input_ids"][b, start:end] = ids
                batch["labels"][b, start:end] = labels
                batch["position_ids"][b, start:end] = torch.arange(len(ids))
                batch["attention_mask"][b, start:end] = 1
                batch["source_ids"][b, start:end] = int(document["source_id"])
                start = end
            batch["position_ids"][b, start:] = torch.arange(width - start)
        return batch


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per-token document number within each row, counting from 1: ``cumsum(position_ids == 0)``. (B, T) → (B, T)."""
    return (position_ids == 0).cumsum(dim=-1)
