"""The reference's generative protocol: greedy decoding, then the first ``A|B|C|D`` in what the model wrote.

Rules taken from the reference code (pandallm commit 920eb16) and the transformers it pinned (4.28.1):

- *Letters.* ``post_processors/reclor.py`` ``answer_clean`` searches ``A|B|C|D`` (its ``A|B|C|D|E`` is commented
  out) whatever the number of options, so an ``E`` is never extracted and a fifth option's question is always
  scored wrong. We do the same.
- *Truncation.* ``ReClorGenerativeCollator`` tokenized with ``truncation=True, max_length=2048`` and the
  tokenizer's default truncation side, the right: BOS and the first 2047 text tokens are kept and the end —
  including ``本题的答案是：`` — is cut. :func:`truncate_prompts` does that (``max_prompt_tokens``) and warns.
- *EOS.* Its ``GenerationConfig`` (``max_new_tokens: 64, num_beams: 1``) set no ``eos_token_id``; transformers
  4.28.1's ``greedy_search`` then falls back to ``model.generation_config.eos_token_id`` (from the checkpoint's
  ``generation_config.json``, or its ``config.json``: 2 for LLaMA), so generation DID stop at the model's EOS.
  :func:`greedy_config` takes the model's EOS the same way (the tokenizer's only when the model names none).
- *Prompt removed.* The reference decoded the whole sequence, and its configs ask ``clean_input: True`` of a
  ``GeneratorForwardFn`` that at 920eb16 takes no such argument; the published accuracies (far above what the
  ``A: …`` option lines would give) can only come from the new text alone, which is what we search.

Prompts of a batch are LEFT padded (a decoder-only model continues from the last position of each row, so real
tokens must end every row; the attention mask hides the pads and ``generate`` derives position ids from it). The
pad id is :func:`fill_id`: the tokenizer's pad token, or — for stock LLaMA, BELLE, Linly tokenizers, which have
none — its EOS/UNK/0; it is never attended to, so which existing id fills the row does not matter. Decoding is
pinned to plain greedy: every setting that a model directory's own ``generation_config.json`` could otherwise slip
in (sampling, beams, repetition penalty, n-gram blocking) is set explicitly, so two models are compared under the
same rule.

A generation without a letter is scored wrong and counted as *unparseable*; that rate is reported next to the
accuracy because base models often answer with anything but a letter (near-chance accuracy then says little).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

from panda.eval.loading import encode_many

REFERENCE_PATTERN = re.compile("A|B|C|D")
"""``answer_clean``'s pattern: A–D only, even for questions with five options."""

REFERENCE_MAX_PROMPT_TOKENS = 2048


def extract_answer(generated: str) -> str | None:
    """The first ``A|B|C|D`` in ``generated`` (the model's output without the prompt), or None."""
    match = REFERENCE_PATTERN.search(generated)
    return match.group(0) if match else None


def fill_id(tokenizer) -> int:
    """An existing id to pad prompts with (masked out either way): :func:`panda.data.tokenizer.fill_token_id`, the
    same rule as training's padding — the pad token, else EOS, else UNK."""
    from panda.data.tokenizer import fill_token_id

    return fill_token_id(tokenizer)


def truncate_prompts(prompt_ids: Sequence[list[int]], max_tokens: int | None) -> tuple[list[list[int]], int]:
    """``(ids cut to their first max_tokens, how many were cut)`` — the reference's right-side truncation."""
    if max_tokens is None:
        return list(prompt_ids), 0
    cut = sum(len(ids) > max_tokens for ids in prompt_ids)
    return [ids[:max_tokens] for ids in prompt_ids], cut


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T), rows right-aligned."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


def model_eos(model, tokenizer):
    """The EOS id(s) generation stops at: the model's generation config, else its config, else the tokenizer's."""
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(config, "eos_token_id", None)
        if eos is not None:
            return eos
    return tokenizer.eos_token_id


def greedy_config(model, tokenizer, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, temperature=None, top_k=None, top_p=None,
        pad_token_id=fill_id(tokenizer), eos_token_id=model_eos(model, tokenizer),
        bos_token_id=tokenizer.bos_token_id,
    )


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, *,
                   prompt_ids: Sequence[list[int]] | None = None,
                   max_prompt_tokens: int | None = REFERENCE_MAX_PROMPT_TOKENS) -> list[str]:
    """Greedy continuations of ``prompts`` (one batched ``generate`` call), prompt removed, specials skipped.

    Args:
        prompt_ids: ``encode_many(tokenizer, prompts)`` when the caller already has it (not encoded again).
        max_prompt_tokens: Keep only the first this many prompt tokens, as the reference did (None: keep all).
    """
    if prompt_ids is None:
        prompt_ids = encode_many(tokenizer, list(prompts))
    prompt_ids, cut = truncate_prompts(prompt_ids, max_prompt_tokens)
    if cut:
        warnings.warn(f"{cut} of {len(prompt_ids)} prompt(s) longer than {max_prompt_tokens} tokens were cut at the "
                      "end, as the reference's tokenizer call did (the answer cue is lost for them)")
    input_ids, attention_mask = left_pad(prompt_ids, fill_id(tokenizer))
    device = next(model.parameters()).device
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=greedy_config(model, tokenizer, max_new_tokens))
    new_tokens = output[:, input_ids.shape[1]:]  # (B, ≤ max_new_tokens)
    return tokenizer.batch_decode(new_tokens.tolist(), skip_special_tokens=True)


def generate_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, *,
                     prompt_ids: Sequence[list[int]] | None = None,
                     max_prompt_tokens: int | None = REFERENCE_MAX_PROMPT_TOKENS) -> list[dict]:
    """Per prompt: ``{"generated": text, "prediction": letter or None}`` (arguments as :func:`generate_texts`)."""
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, prompt_ids=prompt_ids,
                           max_prompt_tokens=max_prompt_tokens)
    return [{"generated": text, "prediction": extract_answer(text)} for text in texts]
