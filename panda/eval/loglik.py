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

Tokenizing only the tail. ``encode(context + continuation)`` for four options would tokenize the ~300-token
prompt four more times. A newline is a hard boundary for a SentencePiece-style BPE whose newline piece (``"\n"``,
or byte fallback's ``<0x0A>``) is in no merge and inside no other piece: BPE only ever merges two adjacent pieces,
so no piece ever spans it, and what lies on either side of it is merged exactly as if it stood alone. If the text
reaches BPE as one word after character-local rewrites only (spaces to ``▁``, a ``▁`` prepended at the start), the
ids of ``context + continuation`` are therefore the context's own ids up to its last newline, then those of the
last line ``t`` plus the continuation — which ``encode("\n" + t + continuation)`` gives after ``encode("\n")``
(the dummy prefix stops at the newline). :func:`joint_encodings` uses that where the tokenizer's ``tokenizer.json``
meets those conditions and no added token's text occurs (added tokens split the text before BPE), checks that
``encode("\n" + t)`` reproduces the context's own ids after its last newline, and otherwise encodes the whole
``context + continuation``; either way the ids are the joint ids, and the rule above is applied to them unchanged.

Sharing the prompt (``share_prompt``, the default). The prompts of a batch go through the model ONCE, with a KV
cache; then the options run on their question's cached prompt, each scored exactly as if it followed the prompt
alone: the prompt is computed once per question and the output head runs only at the positions that predict an
option token (``_logits_at``)::

    prompts (Q, Tp), right-padded, no mask    [p p p p p .]  [p p p .. .]      → cache (Q, H, Tp, D) + last logits
    options (G, S) per length group           [a a b b b c .]  [a b b c c c]    each row on its question's cache
    positions after the prompt                 0 1 0 1 2 0                      restarting for every option
    tree mask   option tokens see the prompt's real tokens and their own option's earlier tokens (never a pad)

The prompts are right-padded so that causal attention alone keeps the pads out (no mask: SDPA's fast causal
kernel). A question's options share one row under a 4D tree mask, so its cache is read by one row instead of being
copied for every option; rows are grouped by length (:func:`length_groups`), so one long row does not pad every
other one to its length. Attention kernels that take no 4D mask (flash attention, see :data:`TREE_ATTENTION`) get
one option per row on a copy of its question's cache, with a 2D mask. A model whose cache is not transformers'
``DynamicCache`` falls back to the joint rows below. With ``share_prompt=False`` each ``prompt + option`` is its
own left-padded row in one forward (logits again only where a continuation token is predicted) — the prompt is
then computed once per option.

Log-probs are normalised in float32 a block of rows at a time and summed per option in float64, so a long
continuation's total carries no float32 rounding drift.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence

import torch

from panda.eval.generation import fill_id, left_pad
from panda.eval.loading import encode, encode_many
from panda.model.attention import kernel_mask, scores_dtype

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


NEWLINE = "\n"
SPACE_PIECE = "▁"
_BARRIERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _newline_barrier(tokenizer) -> tuple[int, re.Pattern | None] | None:
    """``(newline piece id, pattern of the added tokens)`` when BPE provably never merges a newline, else None.

    The proof (module docstring, *tokenizing only the tail*) needs a fast tokenizer whose text reaches one BPE
    model as a single word after only character-local rewrites: no normalizer, or SentencePiece's own (prepend
    ``▁``, spaces to ``▁``); no pre-tokenizer, or a ``Metaspace`` that does not split; a BPE without dropout; the
    newline one piece of its own (``"\n"``, or byte fallback's ``<0x0A>``), inside no other piece and in no merge.
    Read from the backend's JSON once per tokenizer (rechecked when its length changes, i.e. tokens were added).
    """
    cached = _BARRIERS.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    barrier = None
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        spec = json.loads(backend.to_str())
        barrier = _barrier_in(spec)
        if barrier is not None:
            added = sorted((t["content"] for t in spec.get("added_tokens", []) if t["content"]), key=len,
                           reverse=True)
            barrier = (barrier, re.compile("|".join(map(re.escape, added))) if added else None)
    _BARRIERS[tokenizer] = (len(tokenizer), barrier)
    return barrier


def _barrier_in(spec: dict) -> int | None:
    """The newline piece's id if ``spec`` (a ``tokenizer.json``) meets :func:`_newline_barrier`'s conditions."""
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    local = [{"type": "Prepend", "prepend": SPACE_PIECE},
             {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_PIECE}]
    if normalizer is not None and not (normalizer.get("type") == "Sequence"
                                       and all(n in local for n in normalizer.get("normalizers", []))):
        return None
    if pre is not None and not (pre.get("type") == "Metaspace" and pre.get("replacement") == SPACE_PIECE
                                and pre.get("split") is False):
        return None
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return None
    vocab = model.get("vocab", {})
    piece = NEWLINE if NEWLINE in vocab else "<0x0A>" if model.get("byte_fallback") and "<0x0A>" in vocab else None
    if piece is None or any(NEWLINE in other for other in vocab if other != piece):
        return None
    # a merge is a [left, right] pair, or an older "left right" string (tested as a whole: conservative)
    if any(piece in merge for merge in model.get("merges", [])):
        return None
    return vocab[piece]


def joint_encodings(tokenizer, contexts: Sequence[str], context_ids: Sequence[list[int]],
                    continuations: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """``encode(context + continuation)`` for every continuation of every context, exactly, tokenizing only the
    context's last line ``t`` where that provably gives the same ids (see the module docstring).

    Where the tokenizer qualifies (:func:`_newline_barrier`), the context has a newline, and no added token's text
    occurs in ``context + continuation``, the ids are ``context_ids`` up to and including the last newline piece,
    then ``encode("\n" + t + continuation)`` after its own ``encode("\n")``. Before use, ``encode("\n" + t)`` is
    checked to give exactly the context's own ids after that newline, and every tail to start with
    ``encode("\n")``; any question that fails a check, or does not qualify, is encoded jointly in full.
    """
    barrier = _newline_barrier(tokenizer)
    lines = [context.rfind(NEWLINE) if barrier is not None else -1 for context in contexts]
    fast = [q for q, at in enumerate(lines) if at >= 0 and barrier[0] in context_ids[q]
            and not (barrier[1] and any(barrier[1].search(contexts[q] + c) for c in continuations[q]))]
    joints: list[list[list[int] | None]] = [[None] * len(options) for options in continuations]
    if fast:
        texts = [NEWLINE] + [NEWLINE + contexts[q][lines[q] + 1:] + c for q in fast for c in ("", *continuations[q])]
        tails = tokenizer(texts, add_special_tokens=False)["input_ids"]
        newline, tails = list(tails[0]), iter(tails[1:])
        for q in fast:
            cut = len(context_ids[q]) - context_ids[q][::-1].index(barrier[0])  # after the last newline piece
            own, *after = [list(next(tails)) for _ in range(1 + len(continuations[q]))]
            if own != newline + context_ids[q][cut:] or any(ids[: len(newline)] != newline for ids in after):
                continue
            joints[q] = [context_ids[q][:cut] + ids[len(newline):] for ids in after]
    rest = [(q, i) for q, options in enumerate(joints) for i, ids in enumerate(options) if ids is None]
    if rest:
        for (q, i), ids in zip(rest, encode_many(tokenizer, [contexts[q] + continuations[q][i] for q, i in rest])):
            joints[q][i] = ids
    return joints


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


TREE_ATTENTION = ("eager", "sdpa")
"""Attention kernels that take an arbitrary 4D mask: with them a question's options share one row (flash kernels
cannot, and score one option per row)."""


def _bins(rows: Sequence[list[int]], row_question: Sequence[int], tree: bool) -> list[list[int]]:
    """Option indices per forward row: all options of a question (``tree``), or each option alone."""
    if not tree:
        return [[r] for r in range(len(rows))]
    bins: dict[int, list[int]] = {}
    for r, q in enumerate(row_question):
        bins.setdefault(q, []).append(r)
    return list(bins.values())


def _cached_sums(model, context_ids, rows, row_question, pad_id, device) -> torch.Tensor:
    """The prompts' forward once, with a KV cache; then the options as rows on their question's cached prompt.

    The prompts (Q, Tp) are right-padded and run without a mask; only each last real position's logits are kept
    (they predict every option's first token). Then the options go in forward rows of one question each, grouped
    by row length (:func:`length_groups`) so that a long row does not pad every other one to its length: with a
    kernel that takes a 4D mask (:data:`TREE_ATTENTION`) a row holds all of its question's options one after
    another under a tree mask — each option sees the prompt and its own earlier tokens, never another option,
    and its position ids restart after the prompt — so the cache is read once per question and never copied per
    option; with any other kernel a row holds one option and a 2D mask suffices (causal attention does the rest).
    """
    from transformers import DynamicCache

    prompt_lengths = torch.tensor([len(ids) for ids in context_ids], device=device)  # (Q,)
    prompt_ids = right_pad(context_ids, pad_id).to(device)  # (Q, Tp)
    out = _logits_at(model, torch.arange(len(context_ids), device=device), prompt_lengths - 1, prompt_ids.shape[1],
                     input_ids=prompt_ids, use_cache=True, return_output=True)
    if type(out.cache) is not DynamicCache:  # e.g. a sliding-window or recurrent cache: no plain per-row copy
        return _joint_row_sums(model, context_ids, rows, row_question, pad_id, device)
    prompt_cache = [(keys, values) for keys, values, *_ in out.cache]  # per layer (Q, H, Tp, D)
    prompt_visible = torch.arange(prompt_ids.shape[1], device=device) < prompt_lengths[:, None]  # (Q, Tp)
    # token 0 of every option is predicted by its prompt's last position, token j by the option's position j - 1
    first = torch.tensor([row[0] for row in rows], device=device)
    sums = _picked_logprobs(out.logits[torch.tensor(row_question, device=device)], first).double()  # (R,)
    tree = model.config._attn_implementation in TREE_ATTENTION
    bins = _bins(rows, row_question, tree)
    for group in length_groups([sum(len(rows[r]) for r in options) for options in bins]):
        ids, positions, branch, scored = _bin_layout([bins[b] for b in group], rows, pad_id)
        if not scored.shape[1]:  # one-token options only: the prompts' logits scored them all
            continue
        questions = torch.tensor([row_question[bins[b][0]] for b in group], device=device)  # (G,)
        ids, positions, branch = ids.to(device), positions.to(device), branch.to(device)  # (G, S)
        row, column, target, owner = scored.to(device)
        if tree:  # (G, 1, S, Tp + S): the prompt's real tokens, and earlier tokens of the same option (pads: -1)
            width = ids.shape[1]
            own = torch.ones(width, width, dtype=torch.bool, device=device).tril() & (
                branch[:, None, :] == branch[:, :, None])
            allowed = torch.cat([prompt_visible[questions, None, :].expand(-1, width, -1), own], dim=-1)[:, None]
            mask = kernel_mask(allowed, model.config._attn_implementation,
                               scores_dtype(next(model.parameters()).dtype, device.type))
        else:
            mask = torch.cat([prompt_visible[questions], branch >= 0], dim=1).long()
        cache = DynamicCache(ddp_cache_data=[(k[questions], v[questions]) for k, v in prompt_cache],
                             config=model.config)
        logits = _logits_at(model, row, column, ids.shape[1], input_ids=ids, attention_mask=mask,
                            position_ids=prompt_lengths[questions, None] + positions, cache=cache)  # (N, V)
        sums.index_add_(0, owner, _picked_logprobs(logits, target).double())
    return sums


def _bin_layout(bins: Sequence[list[int]], rows: Sequence[list[int]], pad_id: int):
    """Forward rows for ``bins`` (option indices per row, see :func:`_cached_sums`) as tensors.

    Returns ``(ids, positions, branch, scored)``: (G, S) right-padded option ids, positions after the prompt
    (restarting at 0 for every option), branch (the option's place in its row; -1 on pads); ``scored`` (4, N) is
    each token after an option's first one as (row, kept index predicting it, its id, its option). Built with list
    operations, whole ranges at a time: a batch has few rows, and many small tensor ops would cost more.
    """
    width = max(sum(len(rows[r]) for r in options) for options in bins)
    ids, positions, branch = [], [], []
    scored: list[list[int]] = [[], [], [], []]
    for g, options in enumerate(bins):
        row_ids, row_positions, row_branch = [], [], []
        for place, r in enumerate(options):
            start, length = len(row_ids), len(rows[r])
            row_ids.extend(rows[r])
            row_positions.extend(range(length))
            row_branch.extend([place] * length)
            scored[0].extend([g] * (length - 1))
            scored[1].extend(range(start, start + length - 1))
            scored[2].extend(rows[r][1:])
            scored[3].extend([r] * (length - 1))
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        positions.append(row_positions + [0] * pad)
        branch.append(row_branch + [-1] * pad)
    return torch.tensor(ids), torch.tensor(positions), torch.tensor(branch), torch.tensor(scored, dtype=torch.long)


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
        share_prompt: The prompts once, with a KV cache, then per question one row of all its options under a tree
            mask (one row per option with a flash-attention kernel; see module docstring); off: one left-padded
            ``prompt + option`` row per option.
        context_ids: ``encode_many(tokenizer, contexts)`` when the caller already has it (not encoded again).

    Returns:
        Per question, per option: ``{"continuation", "logprob", "tokens", "chars", "split"}``.
    """
    if context_ids is None:
        context_ids = encode_many(tokenizer, list(contexts))
    joints = joint_encodings(tokenizer, contexts, context_ids, continuations)
    rows, row_question, splits = [], [], []
    for q, options in enumerate(continuations):
        for option, joint in zip(options, joints[q]):
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
