"""The reference's generative protocol: greedy decoding, then the first ``A|B|C|D`` in what the model wrote.

Prompts of a batch are LEFT padded (a decoder-only model continues from the last position of each row, so real
tokens must end every row; the attention mask hides the pads and ``generate`` derives position ids from it).
Only the new tokens are decoded — the prompt itself lists ``A: …`` to ``D: …``, so searching the full text would
always find a letter. Decoding is pinned to plain greedy: every setting that a model directory's own
``generation_config.json`` could otherwise slip in (sampling, beams, repetition penalty, n-gram blocking) is set
explicitly, so two models are compared under the same rule.

A generation without a letter is scored wrong and counted as *unparseable*; that rate is reported next to the
accuracy because base models often answer with anything but a letter (near-chance accuracy then says little).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from panda.eval.benchmarks import LETTERS
from panda.eval.loading import encode_many

REFERENCE_LETTERS = "ABCD"


def answer_pattern(num_options: int = 4) -> re.Pattern:
    """``[A-D]`` (the reference's), widened to ``[A-E]``, … for questions with more than four options."""
    return re.compile(f"[A-{LETTERS[max(num_options, len(REFERENCE_LETTERS)) - 1]}]")


def extract_answer(generated: str, num_options: int = 4) -> str | None:
    """The first option letter in ``generated`` (the model's output without the prompt), or None."""
    match = answer_pattern(num_options).search(generated)
    return match.group(0) if match else None


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T), rows right-aligned."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


def greedy_config(tokenizer, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, temperature=None, top_k=None, top_p=None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, *,
                   prompt_ids: Sequence[list[int]] | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (one batched ``generate`` call), prompt removed, specials skipped.

    ``prompt_ids``: ``encode_many(tokenizer, prompts)`` when the caller already has it (not encoded again).
    """
    if prompt_ids is None:
        prompt_ids = encode_many(tokenizer, list(prompts))
    input_ids, attention_mask = left_pad(prompt_ids, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=greedy_config(tokenizer, max_new_tokens))
    new_tokens = output[:, input_ids.shape[1]:]  # (B, ≤ max_new_tokens)
    return tokenizer.batch_decode(new_tokens.tolist(), skip_special_tokens=True)


def generate_answers(model, tokenizer, prompts: Sequence[str], num_options: Sequence[int],
                     max_new_tokens: int = 64, *, prompt_ids: Sequence[list[int]] | None = None) -> list[dict]:
    """Per prompt: ``{"generated": text, "prediction": letter or None}`` (``prompt_ids`` as :func:`generate_texts`)."""
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, prompt_ids=prompt_ids)
    return [{"generated": text, "prediction": extract_answer(text, n)} for text, n in zip(texts, num_options)]
