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
other's length, and the output head runs only at the positions that predict an option token (``_logits_at``)::

    row   [pad pad | p p p p | a a | b b b | c]          prompt once, then options a, b, c
    pos    0   0     0 1 2 3   4 5   4 5 6   4
    mask   option tokens attend to p… and to their own option (causal); pads attend only to themselves

This needs an attention kernel that takes a 4D mask (eager, sdpa: the 4D mask is passed through untouched in
transformers 5, in the form :func:`panda.model.attention.kernel_mask` gives it, as in training). With
flash-attention kernels, or with ``share_prompt=False``, each ``prompt + option`` is its own left-padded row in one forward (logits again only where a continuation token is predicted) — the prompt is then
computed once per option.

Log-probs are normalised in float32 a block of rows at a time and summed per option in float64, so a long
continuation's total carries no float32 rounding drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panda.eval.generation import fill_id, left_pad
from panda.eval.loading import encode, encode_many
from panda.model.attention import kernel_mask

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


def _logits_at(model, rows: torch.Tensor, columns: torch.Tensor, logits_to_keep: int, **inputs) -> torch.Tensor:
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
        return model(**inputs, logits_to_keep=logits_to_keep).logits[rows, columns]
    gathered = []

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] != logits_to_keep:  # not the (R, K, H) input we expect: leave it
            return None
        gathered.append(True)
        return (hidden[rows, columns],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        logits = model(**inputs, logits_to_keep=logits_to_keep).logits
    finally:
        handle.remove()
    return logits if gathered else logits[rows, columns]


def _tree_layout(context_ids, rows, row_question, pad_id):
    """Row layout of :func:`_tree_sums` as tensors; see the module docstring.

    Returns ``(ids, position_ids, branch, keep, question, predictor, target, owner)``: ``(Q, T)`` ids and position
    ids; ``branch`` (Q, T) is 0 on the prompt, ``r + 1`` on option r's tokens and a distinct negative number on each
    pad; the scored tokens (N,) as the question's row, the kept index that predicts them, their id, their option.
    Built with list operations (whole ranges at a time) and one tensor per output: a batch has few rows, and a
    handful of small tensor ops would cost more than the lists.
    """
    tails: list[list[int]] = [[] for _ in context_ids]  # the question's options, concatenated
    positions: list[list[int]] = [list(range(len(prompt))) for prompt in context_ids]
    branches: list[list[int]] = [[0] * len(prompt) for prompt in context_ids]
    starts = []  # per option row: offset of its first token inside its question's tail
    for r, (q, row) in enumerate(zip(row_question, rows)):
        starts.append(len(tails[q]))
        tails[q].extend(row)
        positions[q].extend(range(len(context_ids[q]), len(context_ids[q]) + len(row)))
        branches[q].extend([r + 1] * len(row))
    width = max(len(prompt) + len(tail) for prompt, tail in zip(context_ids, tails))
    keep = max(len(tail) for tail in tails) + 1  # the tails and the last prompt position
    pads = [width - len(prompt) - len(tail) for prompt, tail in zip(context_ids, tails)]
    ids = torch.tensor([[pad_id] * n + prompt + tail for n, prompt, tail in zip(pads, context_ids, tails)])
    position_ids = torch.tensor([[0] * n + pos for n, pos in zip(pads, positions)])
    branch = torch.tensor([list(range(-1, -1 - n, -1)) + br for n, br in zip(pads, branches)])
    # Option token j sits at kept index keep - len(tail) + start + j; it is predicted one position earlier, the
    # first token by the prompt's last position (keep - len(tail) - 1), never by the previous option.
    question, predictor, target, owner = [], [], [], []
    for r, (q, row) in enumerate(zip(row_question, rows)):
        tail_at = keep - len(tails[q])
        first = tail_at + starts[r]
        question.extend([q] * len(row))
        predictor.append(tail_at - 1)
        predictor.extend(range(first, first + len(row) - 1))
        target.extend(row)
        owner.extend([r] * len(row))
    return (ids, position_ids, branch, keep, torch.tensor(question), torch.tensor(predictor), torch.tensor(target),
            torch.tensor(owner))


def _tree_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    """One forward over ``[prompt | option 1 | option 2 | …]`` rows with a tree mask (see module docstring)."""
    ids, position_ids, branch, keep, question, predictor, target, owner = _tree_layout(
        context_ids, rows, row_question, pad_id)
    width = ids.shape[1]
    branch = branch.to(device)
    # A query sees earlier keys of the prompt or of its own option; a pad (its own negative branch) only itself.
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # (T, T)
    key = branch[:, None, :]  # (Q, 1, T)
    allowed = (causal & ((key == 0) | (key == branch[:, :, None])))[:, None]  # (Q, 1, T, T)
    dtype = next(model.parameters()).dtype
    attention_mask = kernel_mask(allowed, model.config._attn_implementation, dtype)  # the model's own form
    logits = _logits_at(model, question.to(device), predictor.to(device), keep, input_ids=ids.to(device),
                        attention_mask=attention_mask, position_ids=position_ids.to(device))  # (N, V)
    return _owner_sums(_picked_logprobs(logits, target.to(device)), owner.to(device), len(rows))


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
    tree = share_prompt and model.config._attn_implementation in TREE_ATTENTION
    score = _tree_sums if tree else _joint_row_sums
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
