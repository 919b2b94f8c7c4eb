r"""Log-likelihood protocol: score every option's continuation given the prompt, as lm-evaluation-harness does.

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

Sharing the prompt (``share_prompt``, the default). The prompts of a batch go through the model ONCE, with a KV
cache; then every option is a row of its own on a copy of its question's cached prompt, so each option is scored
exactly as if it followed the prompt alone, the prompt is computed once per question and the output head runs only
at the positions that predict an option token (``_logits_at``)::

    prompts (Q, Tp), right-padded, no mask    [p p p p p .]  [p p p .. .]      → cache (Q, H, Tp, D) + last logits
    options (R_g, L_g) per length group       [a a . .] [b b b b]  [c .]       each row on its question's cache

The prompts are right-padded so that causal attention alone keeps the pads out (no mask: SDPA's fast causal
kernel); the option rows carry a 2D mask that hides the prompts' pads in the cache. Options are grouped by length
(:func:`length_groups`), so one long option does not pad every other one to its length. Only 2D masks are used,
so every attention kernel (eager, sdpa, flash) takes this path; a model whose cache is not transformers'
``DynamicCache`` falls back to the joint rows below. With ``share_prompt=False`` each
``prompt + option`` is its own left-padded row in one forward (logits again only where a continuation token is
predicted) — the prompt is then computed once per option.

Log-probs are normalised in float32 a block of rows at a time and summed per option in float64, so a long
continuation's total carries no float32 rounding drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panda.eval.generation import fill_id, left_pad
from panda.eval.loading import encode, encode_many

def _split_after(tokenizer, prefix: str, text: str, prefix_ids: list[int]) -> list[int] | None:
    joint = encode(tokenizer, prefix + text)
    if len(joint) > len(prefix_ids) and joint[: len(prefix_ids)] == prefix_ids:
        return joint[len(prefix_ids):]
    return None


def split_continuation(tokenizer, context_ids: list[int], context: str, continuation: str,
                       joint_ids: list[int] | None = None) -> tuple[list[int], str]:
    """Continuation ids for ``continuation`` after ``context`` (``context_ids = encode(context)``) and the rule used.

    Args:
        joint_ids: ``encode(context + continuation)`` if already computed (batched encoding).

    Returns:
        ``(continuation_ids, "joint" | "after_newline" | "separate")`` (see the module docstring).
    """
    if not continuation:
        raise ValueError(f"empty continuation after context ending {context[-40:]!r}")
    joint = joint_ids if joint_ids is not None else encode(tokenizer, context + continuation)
    if len(joint) > len(context_ids) and joint[: len(context_ids)] == context_ids:
        return joint[len(context_ids):], "joint"
    ids = _split_after(tokenizer, "\n", continuation, encode(tokenizer, "\n"))
    if ids is not None:
        return ids, "after_newline"
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"]), "separate"


LOGPROB_CHUNK = 256
"""Rows of logits normalised at a time: a (chunk, V) block stays in cache instead of a fresh (N, V) tensor."""


def _picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits[n].float())[targets[n]]`` for each row n of ``logits`` (N, V) → (N,), in float32."""
    picked = [torch.log_softmax(block.float(), dim=-1).gather(-1, goal.unsqueeze(-1)).squeeze(-1)
              for block, goal in zip(logits.split(LOGPROB_CHUNK), targets.split(LOGPROB_CHUNK))]
    return torch.cat(picked) if picked else logits.new_zeros(0, dtype=torch.float32)


def _owner_sums(picked: torch.Tensor, owner: torch.Tensor, count: int) -> torch.Tensor:
    """Per owner (option), the sum of its tokens' log-probs, accumulated in float64 → (count,)."""
    return torch.zeros(count, dtype=torch.float64, device=picked.device).index_add_(0, owner, picked.double())


def _logits_at(model, rows: torch.Tensor, columns: torch.Tensor, logits_to_keep: int, return_output: bool = False,
               **inputs):
    """Logits (N, V) at the kept positions ``(rows[n], columns[n])`` only, ``columns`` indexing the last
    ``logits_to_keep`` positions.

    The output head (``get_output_embeddings()``) is applied to the gathered hidden states only — a forward pre-hook
    picks the rows out of its ``(R, logits_to_keep, H)`` input — so no logits are computed for positions that are not
    scored and no (R, K, V) tensor is built and then indexed. Whatever the model does after its head (soft-capping,
    scaling, casting) is elementwise and applies unchanged. Models without a separable head fall back to indexing
    the full logits.
    """
    head = model.get_output_embeddings()
    if head is None:
        output = model(**inputs, logits_to_keep=logits_to_keep)
        output.logits = output.logits[rows, columns]
        return output if return_output else output.logits
    gathered = []

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] != logits_to_keep:  # not the (R, K, H) input we expect: leave it
            return None
        gathered.append(True)
        return (hidden[rows, columns],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        output = model(**inputs, logits_to_keep=logits_to_keep)
    finally:
        handle.remove()
    if not gathered:
        output.logits = output.logits[rows, columns]
    return output if return_output else output.logits


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """``input_ids`` (B, T), rows left-aligned and filled with ``pad_id`` after their end."""
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


GROUP_OVERHEAD_TOKENS = 256
"""Padded option tokens one more forward is worth (its fixed cost on CPU), for :func:`length_groups`."""


def length_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices split into forwards of similar length: sorted by length, cut where padding every row of a
    group to its longest costs more than another forward (exact, by dynamic programming over the sorted rows)."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the j shortest rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + overhead + (j - i) * lengths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _cached_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    """The prompts' forward once, with a KV cache; then the options as rows on copies of their question's cache.

    Only 2D masks, so any attention kernel works. The prompts (Q, Tp) are left-padded and only the last position's
    logits are kept (they predict every option's first token). The options are right-padded (R_g, L_g) in groups
    of similar length (:func:`length_groups`), so a long option does not pad every other one to its length; a real
    token never looks forward, so the pads behind it need no masking.
    """
    from transformers import DynamicCache

    prompt_lengths = torch.tensor([len(ids) for ids in context_ids], device=device)  # (Q,)
    prompt_ids = right_pad(context_ids, pad_id).to(device)  # (Q, Tp)
    prompt_mask = (torch.arange(prompt_ids.shape[1], device=device) < prompt_lengths[:, None]).long()
    # no mask: pads sit after every real token, so causal attention alone keeps them out (and SDPA's causal
    # kernel is the fast one); only each prompt's last real position goes through the output head
    out = _logits_at(model, torch.arange(len(context_ids), device=device), prompt_lengths - 1, prompt_ids.shape[1],
                     input_ids=prompt_ids, use_cache=True, return_output=True)
    if type(out.cache) is not DynamicCache:  # e.g. a sliding-window or recurrent cache: no plain per-row copy
        return _joint_row_sums(model, context_ids, rows, row_question, pad_id, device)
    prompt_cache = [(keys, values) for keys, values, *_ in out.cache]  # per layer (Q, H, Tp, D)
    first = out.logits  # (Q, V): predicts the first token of each of the question's options
    question_of = torch.tensor(row_question, device=device)  # (R,)
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    for group in length_groups([len(row) for row in rows]):
        index = torch.tensor(group, device=device)
        questions = question_of[index]  # (G,)
        lengths = torch.tensor([len(rows[r]) for r in group], device=device)
        width = int(lengths.max())
        option_ids = right_pad([rows[r] for r in group], pad_id).to(device)  # (G, L)
        owner = torch.repeat_interleave(torch.arange(len(group), device=device), lengths)  # (N,)
        within = torch.arange(int(lengths.sum()), device=device) - (torch.cumsum(lengths, 0) - lengths)[owner]
        targets = option_ids[owner, within]
        picked = torch.empty(len(owner), dtype=torch.float32, device=device)
        starts = within == 0  # token 0 is predicted by the prompt's last position, token j by option position j-1
        picked[starts] = _picked_logprobs(first[questions[owner[starts]]], targets[starts])
        if (~starts).any():
            cache = DynamicCache(ddp_cache_data=[(k[questions], v[questions]) for k, v in prompt_cache],
                                 config=model.config)
            option_mask = (torch.arange(width, device=device) < lengths[:, None]).long()
            logits = _logits_at(model, owner[~starts], within[~starts] - 1, width, input_ids=option_ids,
                                attention_mask=torch.cat([prompt_mask[questions], option_mask], dim=1),
                                position_ids=prompt_lengths[questions, None] + torch.arange(width, device=device),
                                cache=cache)  # (N - G, V)
            picked[~starts] = _picked_logprobs(logits, targets[~starts])
        sums[index] = _owner_sums(picked, owner, len(group))
    return sums


def _joint_row_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    full = [context_ids[q] + row for q, row in zip(row_question, rows)]
    ids, mask = left_pad(full, pad_id)  # (R, L): every continuation ends at the right edge
    ids, mask = ids.to(device), mask.to(device)
    width = max(len(row) for row in rows)  # K
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    owner = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)  # (N,)
    within = torch.arange(int(lengths.sum()), device=device) - (torch.cumsum(lengths, 0) - lengths)[owner]
    column = width - lengths[owner] + within  # (N,) index among the last K positions: the token predicted
    # kept positions are the last K + 1; token at kept index column + 1 is predicted by kept index column
    logits = _logits_at(model, owner, column, width + 1, input_ids=ids, attention_mask=mask,
                        position_ids=positions)  # (N, V)
    target = ids[:, -width:][owner, column]
    return _owner_sums(_picked_logprobs(logits, target), owner, len(rows))


@torch.no_grad()
def score_options(model, tokenizer, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                  *, share_prompt: bool = True, context_ids: Sequence[list[int]] | None = None) -> list[list[dict]]:
    """Log-likelihood of every continuation given its question's context, all questions in one batch.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer.
        contexts: One prompt per question.
        continuations: Per question, the strings to score after its prompt (one per option).
        share_prompt: One row per question, prompt once + all options under a tree mask (see module docstring);
            off, or with a flash-attention kernel: one left-padded `prompt + option` row per option.
        context_ids: ``encode_many(tokenizer, contexts)`` when the caller already has it (not encoded again).

    Returns:
        Per question, per option: ``{"continuation", "logprob", "tokens", "chars", "split"}``.
    """
    if context_ids is None:
        context_ids = encode_many(tokenizer, list(contexts))
    pairs = [(q, option) for q, options in enumerate(continuations) for option in options]
    joints = encode_many(tokenizer, [contexts[q] + option for q, option in pairs])
    rows, row_question, splits = [], [], []
    for (q, option), joint in zip(pairs, joints):
        ids, split = split_continuation(tokenizer, context_ids[q], contexts[q], option, joint)
        rows.append(ids)
        row_question.append(q)
        splits.append(split)
    device = next(model.parameters()).device
    score = _cached_sums if share_prompt else _joint_row_sums
    sums = score(model, context_ids, rows, row_question, fill_id(tokenizer), device).tolist()
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
