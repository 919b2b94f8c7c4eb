"""Log-likelihood protocol: score every option's continuation given the prompt, as lm-evaluation-harness does.

For a question with prompt ``c`` and options ``x_1 … x_n`` the score of option ``i`` is
``sum_t log p(x_i[t] | c, x_i[<t])`` over its continuation tokens. ``acc`` takes the argmax of that sum,
``acc_norm`` the argmax of the sum divided by the continuation's length in *characters* (lm-eval's
``acc_norm``; characters, not tokens, so that tokenizers with different vocabularies are comparable).

Tokenizing the continuation (SentencePiece and its dummy prefix). Encoding the continuation on its own would
start it with the dummy-prefix piece ``"▁"`` — a token the model never sees in the middle of a text — and
tokenizing context and continuation separately can also split a piece that BPE would have merged across the
boundary. So each option is encoded *together* with its context, ``encode(context + continuation)``, and cut at
the context's own token boundary, ``len(encode(context))``, when the context's ids are a prefix of the joint ids
(``split = "joint"``, the normal case). When BPE merged across the boundary (``人民日`` + ``报`` → ``人民日报``)
that prefix test fails; the context's ids stay as they are and the continuation is tokenized as it would be at the
start of a line: ``encode("\n" + continuation)`` cut after ``encode("\n")`` (``split = "after_newline"``; the
newline is a byte piece that does not merge, and no dummy prefix reaches the continuation). Only if that fails too
is the continuation encoded on its own (``split = "separate"``). Which rule was used is written out per option.

Sharing the prompt. The context's ids are the same for all options of a question, so it runs through the model
once: one batched forward over the questions' left-padded prompts fills the KV cache, the cache rows are repeated
per option, and one batched forward over all options' right-padded continuations finishes the job
(``share_prompt=True``). ``share_prompt=False`` instead runs ``prompt + option`` rows in one forward — simpler,
more compute, for models whose cache cannot be re-indexed.

    prompt pass     [pad pad c c c c]            (questions, Lc)  → logits at the last prompt position
    option pass     [x x x pad] per option       (options, Lk)    attends to its question's cached prompt
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from panda.eval.generation import left_pad
from panda.eval.loading import encode


def _split_after(tokenizer, prefix: str, text: str, prefix_ids: list[int]) -> list[int] | None:
    joint = encode(tokenizer, prefix + text)
    if len(joint) > len(prefix_ids) and joint[: len(prefix_ids)] == prefix_ids:
        return joint[len(prefix_ids):]
    return None


def split_continuation(tokenizer, context_ids: list[int], context: str, continuation: str
                       ) -> tuple[list[int], str]:
    """Continuation ids for ``continuation`` after ``context`` (``context_ids = encode(context)``) and the rule used.

    Returns:
        ``(continuation_ids, "joint" | "after_newline" | "separate")`` (see the module docstring).
    """
    if not continuation:
        raise ValueError(f"empty continuation after context ending {context[-40:]!r}")
    ids = _split_after(tokenizer, context, continuation, context_ids)
    if ids is not None:
        return ids, "joint"
    ids = _split_after(tokenizer, "\n", continuation, encode(tokenizer, "\n"))
    if ids is not None:
        return ids, "after_newline"
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"]), "separate"


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _sum_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over t of log_softmax(logits[:, t])[targets[:, t]] where mask; logits (R, L, V) → (R,)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (R, L)
    return (picked * mask).sum(-1)


def _cache_keyword(model) -> str:
    """``cache`` (transformers ≥ 5.2x) or ``past_key_values`` (earlier): the forward argument and output key."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps forward(**kwargs)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _shared_prompt_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    prompt_ids, prompt_mask = left_pad(context_ids, pad_id)  # (Q, Lc)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache_kw = _cache_keyword(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions, use_cache=True,
                logits_to_keep=1)  # logits (Q, 1, V): only the last prompt position predicts an option token
    cache = out[cache_kw]
    index = torch.tensor(row_question, device=device)
    cache.batch_select_indices(index)  # (R, …): each option row gets its question's prompt
    option_ids, option_mask = _right_pad(rows, pad_id)  # (R, Lk)
    option_ids, option_mask = option_ids.to(device), option_mask.to(device)
    lengths = prompt_mask.sum(-1)[index]  # (R,)
    positions = lengths.unsqueeze(-1) + torch.arange(option_ids.shape[1], device=device)  # (R, Lk)
    attention = torch.cat([prompt_mask[index], option_mask], dim=-1)  # (R, Lc + Lk)
    option_logits = model(input_ids=option_ids, attention_mask=attention, position_ids=positions,
                          use_cache=False, **{cache_kw: cache}).logits  # (R, Lk, V)
    # Token t of an option is predicted at option position t-1; token 0 at the prompt's last position.
    logits = torch.cat([out.logits[index], option_logits[:, :-1]], dim=1)  # (R, Lk, V)
    return _sum_logprobs(logits, option_ids, option_mask)


def _joint_row_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    full = [context_ids[q] + row for q, row in zip(row_question, rows)]
    ids, mask = _right_pad(full, pad_id)  # (R, L)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (R, L-1, V), predicts ids[:, 1:]
    targets = ids[:, 1:]
    target_mask = torch.zeros_like(targets)
    for r, (q, row) in enumerate(zip(row_question, rows)):
        start = len(context_ids[q]) - 1
        target_mask[r, start:start + len(row)] = 1
    return _sum_logprobs(logits, targets, target_mask)


@torch.no_grad()
def score_options(model, tokenizer, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                  *, share_prompt: bool = True) -> list[list[dict]]:
    """Log-likelihood of every continuation given its question's context, all questions in one batch.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer.
        contexts: One prompt per question.
        continuations: Per question, the strings to score after its prompt (one per option).
        share_prompt: Run each prompt once and reuse its KV cache for the options (see module docstring).

    Returns:
        Per question, per option: ``{"continuation", "logprob", "tokens", "chars", "split"}``.
    """
    context_ids = [encode(tokenizer, context) for context in contexts]
    rows, row_question, splits = [], [], []
    for q, (context, options) in enumerate(zip(contexts, continuations)):
        for option in options:
            ids, split = split_continuation(tokenizer, context_ids[q], context, option)
            rows.append(ids)
            row_question.append(q)
            splits.append(split)
    device = next(model.parameters()).device
    score = _shared_prompt_sums if share_prompt else _joint_row_sums
    sums = score(model, context_ids, rows, row_question, tokenizer.pad_token_id, device).tolist()
    results: list[list[dict]] = [[] for _ in contexts]
    for r, q in enumerate(row_question):
        option = continuations[q][len(results[q])]
        results[q].append({"continuation": option, "logprob": sums[r], "tokens": len(rows[r]),
                           "chars": len(option), "split": splits[r]})
    return results


def choose(scores: list[dict]) -> tuple[int, int]:
    """``(acc choice, acc_norm choice)``: argmax of the sum, and of the sum per character (first on ties)."""
    by_sum = max(range(len(scores)), key=lambda i: (scores[i]["logprob"], -i))
    by_char = max(range(len(scores)), key=lambda i: (scores[i]["logprob"] / scores[i]["chars"], -i))
    return by_sum, by_char
