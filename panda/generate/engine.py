"""Generation for ``panda generate`` and ``panda chat``: requests → prompt ids → transformers ``generate`` → replies.

A request is ``{"prompt": str}`` (raw text after BOS, as a completion) or ``{"messages": [...]}`` (a conversation,
rendered by the model's chat format — the training code's renderer, :mod:`panda.data.chat_format`). Prompts are
encoded by the training tokenization (:func:`panda.data.tokenize.encode_segments`), never re-tokenized.

Decoding is transformers' own ``generate`` with its KV cache; what we add is batching: prompts are sorted by length
and left padded (a decoder-only model continues from the last position of each row; the attention mask hides the
pads, so a pad-less tokenizer's fill id is never attended), which keeps padding small. Every decoding knob is set
explicitly in one :class:`GenerationConfig` — a model directory's own ``generation_config.json`` cannot slip in
sampling. Sampling draws from ``torch``'s generator seeded per batch with ``seed + batch index``: the same input,
batch size and seed give the same text. A row stops at EOS, at one of the user's stop strings (transformers'
``stop_strings``; the text is cut before it) or at ``max_new_tokens``; ``stop_reason`` says which.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from panda.data.chat_format import ChatFormatError, prompt_ids
from panda.errors import UserError
from panda.eval.generation import left_pad


class RequestError(UserError, ValueError):
    """A request (input line) that cannot be generated for; the message says why."""


@dataclass
class Sampling:
    """How tokens are chosen.

    Args:
        max_new_tokens: Most tokens generated per request.
        temperature: 0 = greedy decoding; above 0 samples with this temperature.
        top_p: Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1 = off).
        top_k: Keep the k most likely tokens (0 = off).
        repetition_penalty: Above 1 discourages tokens already present (1 = off).
        stop: Strings that end a reply (the reply is cut before them), besides EOS.
        seed: Seed of the sampling (batch ``i`` uses ``seed + i``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
                  ("temperature", self.temperature >= 0, ">= 0"), ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("top_k", self.top_k >= 0, ">= 0"), ("repetition_penalty", self.repetition_penalty > 0, "> 0")]
        for name, ok, expected in checks:
            if not ok:
                from panda.errors import ConfigError

                raise ConfigError(f"--{name} {getattr(self, name)!r}: expected {expected}")

    def config(self, tokenizer, max_new_tokens: int):
        from transformers import GenerationConfig

        sample = self.temperature > 0
        return GenerationConfig(
            do_sample=sample, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
            temperature=self.temperature if sample else None, top_p=self.top_p if sample else None,
            top_k=(self.top_k or None) if sample else None, repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=0, stop_strings=list(self.stop) or None, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        )


@dataclass
class Reply:
    """One generation: the decoded text (cut before a stop string), the generated ids and why it stopped (``eos``,
    ``stop_string`` or ``length``). For a conversation, ``ChatFormat.reply_text`` removes the reply's join."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: str

    @property
    def output_tokens(self) -> int:
        return len(self.token_ids)


def request_ids(request: Mapping, loaded) -> list[int]:
    """Prompt ids of one request (``prompt`` or ``messages``); :class:`RequestError` says what is wrong with it."""
    if not isinstance(request, Mapping):
        raise RequestError(f"expected a JSON object with 'prompt' or 'messages', got {type(request).__name__}")
    if ("prompt" in request) == ("messages" in request):
        raise RequestError(f"expected exactly one of 'prompt' or 'messages', found keys {sorted(request)}")
    if "prompt" in request:
        if not isinstance(request["prompt"], str) or not request["prompt"]:
            raise RequestError("'prompt' must be a non-empty string")
        segments = [(request["prompt"], False)]
    else:
        messages = request["messages"]
        try:
            segments = loaded.chat_format.segments(messages)
        except ChatFormatError as error:
            raise RequestError(str(error)) from None
        if messages[-1].get("role") != "user":
            raise RequestError("the last message must be the user's (the reply is generated after it)")
    return prompt_ids(segments, loaded.tokenizer)


def check_length(ids: Sequence[int], context: int) -> None:
    if len(ids) >= context:
        raise RequestError(f"the prompt has {len(ids)} tokens but the model's context is {context} "
                           "(max_position_embeddings); shorten it")


@torch.no_grad()
def generate_ids(loaded, rows: Sequence[Sequence[int]], sampling: Sampling, *, batch_index: int = 0,
                 streamer=None) -> list[Reply]:
    """Generate for one batch of prompt ids (one ``model.generate`` call)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    room = loaded.context_length - input_ids.shape[1]
    max_new_tokens = max(1, min(sampling.max_new_tokens, room))
    if sampling.temperature > 0:
        torch.manual_seed(sampling.seed + batch_index)
    device = next(model.parameters()).device
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=sampling.config(tokenizer, max_new_tokens),
                            tokenizer=tokenizer if sampling.stop else None, streamer=streamer)
    return [_reply(row, list(generated), len(prompt), sampling, loaded)
            for row, (generated, prompt) in enumerate(zip(output[:, input_ids.shape[1]:].tolist(), rows))]


def _reply(row: int, generated: list[int], prompt_tokens: int, sampling: Sampling, loaded) -> Reply:
    tokenizer = loaded.tokenizer
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in generated:  # generate pads finished rows after their EOS
        ids, reason = generated[:generated.index(eos)], "eos"
    else:  # a row stopped by a stop string is padded after it while the batch goes on
        ids, reason = list(generated), "length"
        while ids and ids[-1] == pad:
            ids.pop()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [text.index(stop) for stop in sampling.stop if stop in text]
    if cuts and reason != "eos":
        text, reason = text[:min(cuts)], "stop_string"
    return Reply(text, ids, prompt_tokens, reason)


def generate_all(loaded, prompts: Sequence[Sequence[int]], sampling: Sampling, batch_size: int,
                 on_batch=None) -> Iterator[tuple[int, Reply]]:
    """``(index, reply)`` for every prompt, generated in batches of similar length (longest first)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for batch_index, start in enumerate(range(0, len(order), batch_size)):
        chosen = order[start:start + batch_size]
        replies = generate_ids(loaded, [prompts[i] for i in chosen], sampling, batch_index=batch_index)
        if on_batch is not None:
            on_batch(len(chosen))
        yield from zip(chosen, replies)
