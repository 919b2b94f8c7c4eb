"""Examples → token ids + labels, with the loss mask built from the segment boundaries themselves.

Every :class:`~panda.data.records.Segment` is tokenized on its own and the ids are concatenated, so the position
where the prompt ends is *known*, not guessed (the reference tokenized prompt and prompt+response separately and
counted the difference, which is off whenever the tokenizer merges across the boundary). The layout is::

    input_ids  BOS  prompt…            response…  EOS   user…           answer…   EOS
    labels     -100 -100 … -100        response…  EOS   -100 … -100     answer…   EOS

Labels are *unshifted* (``labels[t]`` is the token at position ``t``; the module shifts), ``labels[0]`` (BOS) is
always ``IGNORE_INDEX``, untrained segments are ``IGNORE_INDEX``, and an EOS that closes a trained segment is
trained (the model must learn to stop). Corpus text that happens to spell a special token (``"</s>"``) is
encoded as text, never as the special id.

**The SentencePiece dummy prefix.** LLaMA tokenizers prepend ``"▁"`` to the text they encode (``"你好"`` →
``[1, 29871("▁"), …]``). Encoding each segment naively would put a spurious ``"▁"`` at the start of every
segment, which the model would learn to emit before each response. We keep the prefix on the document's first
non-empty segment only and encode every later segment with the prefix switched off (a copy of the fast
tokenizer whose ``Metaspace``/``Prepend`` step never prepends; the same idea as torchtune's
``trim_leading_whitespace``). In the common case the ids then equal the encoding of the concatenated text; they
differ only where BPE would have merged characters across a segment boundary, which a per-segment encoding can
never reproduce. Either way the labels are derived from exactly the ids fed.

**Too long.** Plain text (every segment trained) longer than ``max_seq_length`` is cut into window-sized chunks,
each starting with its own BOS (whose label is ignored), so no token is thrown away. An instruction/conversation
that does not fit keeps its final response (the last trained segment and everything after it) and loses the
*beginning* of its context (``truncation="trim_prompt_start"``), or is dropped (``truncation="drop"``). If the
final response alone does not fit, the context keeps at most half the window (its end) and the response is cut at
its end (no EOS then: the response did not end). Every such example is flagged so the data stats can count it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

from panda.constants import IGNORE_INDEX
from panda.data.records import Example

Truncation = Literal["trim_prompt_start", "drop"]


class TokenizedSequence(NamedTuple):
    """One training sequence: ids and their unshifted labels, of equal length (≤ ``max_seq_length``)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class EncodedExamples:
    """What one :class:`Example` became.

    Args:
        sequences: One sequence normally; several when over-long plain text was chunked; none when dropped.
        truncated: An over-long instruction/conversation was trimmed to fit (tokens were lost).
        dropped: An over-long instruction/conversation was dropped (``truncation="drop"``).
    """

    sequences: tuple[TokenizedSequence, ...]
    truncated: bool = False
    dropped: bool = False

    @property
    def chunks(self) -> int:
        """Number of sequences the example was split into (1 unless over-long plain text, 0 if dropped)."""
        return len(self.sequences)

    def __iter__(self) -> Iterator[TokenizedSequence]:
        return iter(self.sequences)

    def __len__(self) -> int:
        return len(self.sequences)


@dataclass
class EncodingStats:
    """Running counts over encoded examples (one per source in the data stats)."""

    examples: int = 0
    sequences: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    chunked: int = 0
    truncated: int = 0
    dropped: int = 0

    def add(self, encoded: EncodedExamples) -> None:
        self.examples += 1
        self.sequences += len(encoded.sequences)
        self.chunked += len(encoded.sequences) > 1
        self.truncated += encoded.truncated
        self.dropped += encoded.dropped
        for seq in encoded.sequences:
            self.tokens += len(seq.input_ids)
            self.loss_tokens += len(seq.labels) - seq.labels.count(IGNORE_INDEX)

    def merge(self, other: EncodingStats) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Backends(NamedTuple):
    first: object  # tokenizers.Tokenizer for a document's first segment (dummy prefix on)
    continuation: object  # the same with the dummy prefix off


# tokenizer → its two segment encoders; weak so that the cache does not keep a dropped tokenizer alive
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _segment_backends(tokenizer) -> _Backends | None:
    """Copies of a fast tokenizer's backend that treat special-token strings as text, with/without dummy prefix."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backends = _BACKENDS.get(tokenizer)
    if backends is None:
        from tokenizers import Tokenizer

        first, continuation = Tokenizer.from_str(backend.to_str()), Tokenizer.from_str(backend.to_str())
        for component, attribute, value in ((continuation.pre_tokenizer, "prepend_scheme", "never"),
                                            (continuation.normalizer, "prepend", "")):
            for part in _parts(component):
                if type(part).__name__ in ("Metaspace", "Prepend"):
                    setattr(part, attribute, value)
        for copy in (first, continuation):
            copy.encode_special_tokens = True  # corpus text that spells "</s>" is text, not an EOS
            # the serialized backend carries the padding/truncation a padded call (generation, evaluation) left
            # switched on in the shared tokenizer; a training segment is never padded nor cut here
            copy.no_padding()
            copy.no_truncation()
        backends = _BACKENDS[tokenizer] = _Backends(first, continuation)
    return backends


def _parts(component) -> list:
    """The children of a ``tokenizers`` ``Sequence`` (which has no ``len``), or ``[component]``."""
    if component is None:
        return []
    if type(component).__name__ != "Sequence":
        return [component]
    parts = []
    while True:
        try:
            parts.append(component[len(parts)])
        except IndexError:
            return parts


def encode_segments(texts: Sequence[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, no special tokens added; only the first non-empty text gets the dummy prefix.

    Args:
        texts: The segments' texts, in document order.
        tokenizer: A Hugging Face tokenizer (fast tokenizers get the dummy-prefix handling; others encode each text
            as they would alone).
    """
    return _encode_documents([texts], tokenizer)[0]


def _encode_documents(documents: Sequence[Sequence[str]], tokenizer) -> list[list[list[int]]]:
    """:func:`encode_segments` for many documents, in two batched backend calls."""
    ids: list[list[list[int]]] = [[[] for _ in texts] for texts in documents]
    backends = _segment_backends(tokenizer)
    if backends is None:
        for d, texts in enumerate(documents):
            if texts:
                ids[d] = [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        return ids
    first: list[tuple[int, int]] = []
    continuation: list[tuple[int, int]] = []
    for d, texts in enumerate(documents):
        seen_text = False
        for i, text in enumerate(texts):
            if text:  # an empty text stays [] and does not take the dummy prefix
                (continuation if seen_text else first).append((d, i))
                seen_text = True
    for positions, backend in ((first, backends.first), (continuation, backends.continuation)):
        if positions:
            encodings = backend.encode_batch([documents[d][i] for d, i in positions], add_special_tokens=False)
            for (d, i), encoding in zip(positions, encodings):
                ids[d][i] = encoding.ids
    return ids


def encode_example(example: Example, tokenizer, max_seq_length: int, *,
                   truncation: Truncation = "trim_prompt_start") -> EncodedExamples:
    """Tokenize ``example`` into training sequences of at most ``max_seq_length`` tokens (see module docstring).

    Args:
        example: The document; it needs at least one trained segment.
        tokenizer: Hugging Face tokenizer with BOS and EOS tokens.
        max_seq_length: Longest sequence produced (≥ 2: BOS plus one token).
        truncation: For an over-long instruction/conversation: ``"trim_prompt_start"`` drops the beginning of the
            context and keeps the final response; ``"drop"`` drops the example.
    """
    return encode_examples([example], tokenizer, max_seq_length, truncation=truncation)[0]


def encode_examples(examples: Sequence[Example], tokenizer, max_seq_length: int, *,
                    truncation: Truncation = "trim_prompt_start") -> list[EncodedExamples]:
    """:func:`encode_example` for a batch of examples (their segments go through two batched tokenizer calls)."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2 (BOS + one token), got {max_seq_length}")
    if truncation not in ("trim_prompt_start", "drop"):
        raise ValueError(f"truncation must be 'trim_prompt_start' or 'drop', got {truncation!r}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} needs both a BOS and an EOS token")
    for example in examples:
        if not any(segment.trained for segment in example.segments):
            raise ValueError(f"{example.origin or 'example'} (source {example.source!r}): no trained segment, "
                             "so it would contribute no loss; every example needs a response or plain text")
    documents = _encode_documents([[segment.text for segment in example.segments] for example in examples],
                                  tokenizer)
    return [_layout(example, segment_ids, bos, eos, max_seq_length, truncation)
            for example, segment_ids in zip(examples, documents)]


def _layout(example: Example, segment_ids: list[list[int]], bos: int, eos: int, max_seq_length: int,
            truncation: Truncation) -> EncodedExamples:
    """Concatenate the segments' ids, build the labels, and fit the result into ``max_seq_length``."""
    body_ids: list[int] = []
    body_labels: list[int] = []
    final_start = 0  # where the last trained segment starts in the body
    for segment, ids in zip(example.segments, segment_ids):
        if segment.trained:
            final_start = len(body_ids)
            body_ids += ids
            body_ids.append(eos)
            body_labels += ids
            body_labels.append(eos)
        else:
            body_ids += ids
            body_labels += [IGNORE_INDEX] * len(ids)

    budget = max_seq_length - 1  # room after BOS
    if len(body_ids) <= budget:
        return EncodedExamples((_with_bos(bos, body_ids, body_labels),))
    if all(segment.trained for segment in example.segments):
        return EncodedExamples(tuple(_with_bos(bos, body_ids[i:i + budget], body_labels[i:i + budget])
                                     for i in range(0, len(body_ids), budget)))
    if truncation == "drop":
        return EncodedExamples((), dropped=True)
    final_length = len(body_ids) - final_start
    if final_length <= budget:
        keep_context = budget - final_length
        final_end = len(body_ids)
    else:
        keep_context = min(final_start, budget // 2)
        final_end = final_start + budget - keep_context
    start = final_start - keep_context
    return EncodedExamples((_with_bos(bos, body_ids[start:final_end], body_labels[start:final_end]),),
                           truncated=True)


def _with_bos(bos: int, ids: list[int], labels: list[int]) -> TokenizedSequence:
    return TokenizedSequence([bos, *ids], [IGNORE_INDEX, *labels])
