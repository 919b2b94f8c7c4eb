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

Sharing the prompt. All options of a question go into ONE row after its prompt, and a tree-shaped attention
mask lets each option see the prompt and its own earlier tokens only — never another option — with position ids
restarting after the prompt for every option, so each option is scored exactly as if it followed the prompt
alone. A batch of questions is one forward: the prompt is computed once, options are not padded to each
other's length, and logits are kept only for the options' tail (``logits_to_keep``)::

    row   [pad pad | p p p p | a a | b b b | c]          prompt once, then options a, b, c
    pos    0   0     0 1 2 3   4 5   4 5 6   4
    mask   option tokens attend to p… and to their own option (causal); pads attend only to themselves

This needs an attention kernel that takes a 4D mask (eager, sdpa: the 4D mask is passed through untouched in
transformers 5; a bool mask for sdpa, an additive one for eager). With flash-attention kernels, or with
``share_prompt=False``, each ``prompt + option`` is its own left-padded row in one forward (logits kept only for
the continuation tail) — the prompt is then computed once per option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panda.eval.generation import left_pad
from panda.eval.loading import encode, encode_many

TREE_ATTENTION = ("eager", "sdpa")
"""Attention kernels that take an arbitrary 4D mask (flash kernels cannot: they score prompt + option rows)."""


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


def _sum_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of log_softmax(logits[r, t])[targets[r, t]] over positions where mask; (R, L, V) → (R,).

    Only the masked positions are normalised (in float32), so padding costs no softmax.
    """
    keep = mask.bool()  # (R, L)
    logprobs = torch.log_softmax(logits[keep].float(), dim=-1)  # (N, V)
    picked = logprobs.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)  # (N,)
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand_as(mask)[keep]  # (N,)
    return torch.zeros(mask.shape[0], device=mask.device).index_add_(0, rows, picked)


def _tree_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    """One forward over ``[prompt | option 1 | option 2 | …]`` rows with a tree mask (see module docstring)."""
    tails: list[list[int]] = [[] for _ in context_ids]  # the question's options, concatenated
    starts = []  # per option row: offset of its first token inside its question's tail
    for q, row in zip(row_question, rows):
        starts.append(len(tails[q]))
        tails[q].extend(row)
    sequences, positions, branches = [], [], []
    for q, prompt in enumerate(context_ids):
        sequences.append(prompt + tails[q])
        positions.append(list(range(len(prompt))))
        branches.append([0] * len(prompt))
    for r, (q, row) in enumerate(zip(row_question, rows)):
        positions[q].extend(range(len(context_ids[q]), len(context_ids[q]) + len(row)))
        branches[q].extend([r + 1] * len(row))
    ids, real = left_pad(sequences, pad_id)  # (Q, T), tails end at the right edge
    width = ids.shape[1]
    position_ids = torch.zeros_like(ids)
    branch = torch.full_like(ids, -1)
    for q in range(len(sequences)):
        position_ids[q, width - len(sequences[q]):] = torch.tensor(positions[q])
        branch[q, width - len(sequences[q]):] = torch.tensor(branches[q])
    real = real.bool()
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (T, T)
    same_branch = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])  # (Q, T, T): key is prompt/own
    allowed = causal & same_branch & real[:, None, :] & real[:, :, None]
    allowed |= torch.eye(width, dtype=torch.bool)  # a pad query attends to itself: no all-masked (NaN) rows
    allowed = allowed[:, None]  # (Q, 1, T, T)
    if model.config._attn_implementation == "eager":
        dtype = next(model.parameters()).dtype
        attention_mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    else:
        attention_mask = allowed
    keep = max(len(tail) for tail in tails) + 1  # the tails and the last prompt position
    logits = model(input_ids=ids.to(device), attention_mask=attention_mask.to(device),
                   position_ids=position_ids.to(device), logits_to_keep=keep).logits  # (Q, keep, V)
    # Option token j sits at kept index keep - len(tail) + start + j; it is predicted one position earlier, the
    # first token by the prompt's last position (keep - len(tail) - 1), never by the previous option.
    question, predictor, target, owner = [], [], [], []
    for r, (q, row) in enumerate(zip(row_question, rows)):
        first = keep - len(tails[q]) + starts[r]
        for j, token in enumerate(row):
            question.append(q)
            predictor.append(keep - len(tails[q]) - 1 if j == 0 else first + j - 1)
            target.append(token)
            owner.append(r)
    selected = logits[torch.tensor(question, device=device), torch.tensor(predictor, device=device)]  # (N, V)
    picked = torch.log_softmax(selected.float(), dim=-1).gather(
        -1, torch.tensor(target, device=device).unsqueeze(-1)).squeeze(-1)  # (N,)
    return torch.zeros(len(rows), device=device).index_add_(0, torch.tensor(owner, device=device), picked)


def _joint_row_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    full = [context_ids[q] + row for q, row in zip(row_question, rows)]
    ids, mask = left_pad(full, pad_id)  # (R, L): every continuation ends at the right edge
    ids, mask = ids.to(device), mask.to(device)
    width = max(len(row) for row in rows)  # K
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=width + 1).logits[:, :-1]  # (R, K, V): predicts ids[:, -K:]
    target_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        target_mask[r, width - len(row):] = 1
    return _sum_logprobs(logits, ids[:, -width:], target_mask)


@torch.no_grad()
def score_options(model, tokenizer, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                  *, share_prompt: bool = True) -> list[list[dict]]:
    """Log-likelihood of every continuation given its question's context, all questions in one batch.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer.
        contexts: One prompt per question.
        continuations: Per question, the strings to score after its prompt (one per option).
        share_prompt: One row per question, prompt once + all options under a tree mask (see module docstring);
            off, or with a flash-attention kernel: one left-padded `prompt + option` row per option.

    Returns:
        Per question, per option: ``{"continuation", "logprob", "tokens", "chars", "split"}``.
    """
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
    tree = share_prompt and model.config._attn_implementation in TREE_ATTENTION
    score = _tree_sums if tree else _joint_row_sums
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
