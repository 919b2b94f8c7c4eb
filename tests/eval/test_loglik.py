import pytest
import torch

from panda.eval.loading import encode
from panda.eval import loglik
from panda.eval.loglik import choose, length_groups, score_options, split_continuation
from panda.eval.scoring import score_batch

CONTEXTS = ["阅读下面的文章：\n\n人民日报社论指出，今年经济发展很快。\n\n本题的答案是：", "你好", "人民日"]
OPTIONS = [["A", "B", "C", "经济发展很快"], ["世界", "，中国人民"], ["报", "本"]]


def plain_scores(model, tokenizer, context, options):
    """One forward per option over context + continuation, log-probs summed by hand."""
    scores = []
    context_ids = encode(tokenizer, context)
    for option in options:
        continuation_ids, _ = split_continuation(tokenizer, context_ids, context, option)
        ids = torch.tensor([context_ids + continuation_ids])
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # (T, V)
        scores.append(sum(logprobs[len(context_ids) - 1 + t, token].item()
                          for t, token in enumerate(continuation_ids)))
    return scores


@pytest.fixture(params=["sdpa", "eager"])
def attention_model(request, tiny_llama_config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(tiny_llama_config, attn_implementation=request.param).eval()


@pytest.mark.parametrize("share_prompt", [True, False])
def test_batched_scores_equal_a_plain_per_option_computation(attention_model, tokenizer, share_prompt):
    results = score_options(attention_model, tokenizer, CONTEXTS, OPTIONS, share_prompt=share_prompt)
    for context, options, result in zip(CONTEXTS, OPTIONS, results):
        expected = plain_scores(attention_model, tokenizer, context, options)
        assert [r["continuation"] for r in result] == options
        assert [r["chars"] for r in result] == [len(o) for o in options]
        assert [r["logprob"] for r in result] == pytest.approx(expected, abs=1e-5)
        assert all(r["tokens"] >= 1 and r["logprob"] < 0 for r in result)


def forward_shapes(model, tokenizer, **kwargs) -> list[tuple[int, int]]:
    shapes = []
    handle = model.register_forward_hook(
        lambda module, args, kw, output: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        score_options(model, tokenizer, CONTEXTS, OPTIONS, **kwargs)
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize("tree", [True, False])
def test_each_prompt_is_computed_once_and_options_run_in_length_groups(tiny_model, tokenizer, monkeypatch, tree):
    if not tree:  # as for a flash-attention kernel: one option per row, 2D masks only
        monkeypatch.setattr(loglik, "TREE_ATTENTION", ())
    shapes = forward_shapes(tiny_model, tokenizer, share_prompt=True)
    prompt_tokens = [len(encode(tokenizer, c)) for c in CONTEXTS]
    tokens = [[len(split_continuation(tokenizer, encode(tokenizer, c), c, o)[0]) for o in options]
              for c, options in zip(CONTEXTS, OPTIONS)]
    assert shapes[0] == (3, max(prompt_tokens))  # the prompts once, one row per question
    # a row per question holding all its options (tree mask), or a row per option; rows grouped by length
    widths = [sum(t) for t in tokens] if tree else [n for t in tokens for n in t]
    assert shapes[1:] == [(len(g), max(widths[i] for i in g)) for g in length_groups(widths)]
    assert sum(rows for rows, _ in shapes[1:]) == (3 if tree else 8)
    joint = forward_shapes(tiny_model, tokenizer, share_prompt=False)
    assert joint == [(8, max(p + n for p, t in zip(prompt_tokens, tokens) for n in t))]


@pytest.mark.parametrize(("lengths", "overhead", "expected"), [
    ([3, 40, 4, 41, 2], 256, [[4, 0, 2, 1, 3]]),                  # one forward is cheaper than two
    ([3, 40, 4, 41, 2], 20, [[4, 0, 2], [1, 3]]),                  # short and long options apart
    ([5, 5, 5], 1, [[0, 1, 2]]),                                   # equal lengths: nothing to gain
])
def test_length_groups_minimise_padded_tokens_plus_forwards(lengths, overhead, expected):
    groups = length_groups(lengths, overhead)
    assert groups == expected


def test_continuation_is_cut_from_the_joint_encoding_without_a_dummy_prefix(tokenizer):
    context = "本题的答案是："
    context_ids = encode(tokenizer, context)
    ids, split = split_continuation(tokenizer, context_ids, context, "经济发展很快")
    assert split == "joint"
    assert context_ids + ids == encode(tokenizer, context + "经济发展很快")
    assert tokenizer.decode(ids) == "经济发展很快"
    assert tokenizer.convert_ids_to_tokens(ids[0]) != "▁"


def test_merge_across_the_boundary_falls_back_to_line_start_tokenization(tokenizer):
    context = "人民日"  # BPE merges 人民日 + 报 into one piece, so the context's ids are no prefix of the joint ids
    context_ids = encode(tokenizer, context)
    joint = encode(tokenizer, context + "报")
    assert joint[: len(context_ids)] != context_ids
    ids, split = split_continuation(tokenizer, context_ids, context, "报")
    assert split == "after_newline"
    assert tokenizer.convert_ids_to_tokens(ids) == ["报"]  # no dummy-prefix "▁" in front
    separate = tokenizer("报", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(separate)[0] == "▁"  # what plain separate encoding would have scored


def test_acc_takes_the_sum_and_acc_norm_the_sum_per_character():
    scores = [{"logprob": -4.0, "chars": 2}, {"logprob": -5.0, "chars": 10}, {"logprob": -9.0, "chars": 3}]
    assert choose(scores) == (0, 1)
    tie = [{"logprob": -2.0, "chars": 1}, {"logprob": -2.0, "chars": 1}]
    assert choose(tie) == (0, 0)


def test_score_batch_records_loglik_predictions(tiny_model, tokenizer):
    question = {"index": 4, "prompt": CONTEXTS[0], "options": OPTIONS[0], "label": 3}
    [record] = score_batch(tiny_model, tokenizer, [question], protocol="loglik")
    loglik = record["loglik"]
    sums = [o["logprob"] for o in loglik["options"]]
    per_char = [o["logprob"] / o["chars"] for o in loglik["options"]]
    assert loglik["prediction"] == "ABCD"[sums.index(max(sums))]
    assert loglik["prediction_norm"] == "ABCD"[per_char.index(max(per_char))]
    assert loglik["correct"] == (loglik["prediction"] == "D") and record["gold"] == "D"
    assert "generate" not in record
    [letters] = score_batch(tiny_model, tokenizer, [question], protocol="loglik", continuation="letter")
    assert [o["continuation"] for o in letters["loglik"]["options"]] == ["A", "B", "C", "D"]
    assert letters["loglik"]["prediction"] == letters["loglik"]["prediction_norm"]


def test_prompts_beyond_the_model_positions_are_flagged(tiny_model, tokenizer):
    question = {"index": 0, "origin": "long.jsonl:1", "prompt": "经济发展" * 600, "options": ["A", "B"], "label": 0}
    with pytest.warns(UserWarning, match=r"exceed the model's 512 positions \(first: long.jsonl:1\)"):
        [record] = score_batch(tiny_model, tokenizer, [question], protocol="loglik")
    assert record["prompt_tokens"] > 512 - 64


def test_long_continuations_keep_float64_accuracy(attention_model, tokenizer):
    # ~100 continuation tokens: per-token log-probs are summed in float64, so the total stays within 1e-5 of a
    # double-precision per-option computation (a float32 running sum drifts by ~1e-4 at this length)
    context, options = CONTEXTS[0], ["经济发展很快，人民日报社论指出。" * 12, "你好世界" * 15]
    [result] = score_options(attention_model, tokenizer, [context], [options])
    assert [r["tokens"] for r in result] == [len(split_continuation(tokenizer, encode(tokenizer, context), context,
                                                                    o)[0]) for o in options]
    assert min(r["tokens"] for r in result) >= 30
    expected = plain_scores(attention_model, tokenizer, context, options)
    assert [r["logprob"] for r in result] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_models_without_a_separate_output_head_score_the_same(tiny_model, tokenizer, monkeypatch, share_prompt):
    # logits are normally computed only at the scored positions (a pre-hook on get_output_embeddings()); without
    # such a head the full logits of the kept positions are indexed instead, with the same result
    gathered = score_options(tiny_model, tokenizer, CONTEXTS, OPTIONS, share_prompt=share_prompt)
    monkeypatch.setattr(tiny_model, "get_output_embeddings", lambda: None)
    full = score_options(tiny_model, tokenizer, CONTEXTS, OPTIONS, share_prompt=share_prompt)
    for a, b in zip(gathered, full):
        assert [r["logprob"] for r in a] == pytest.approx([r["logprob"] for r in b], abs=1e-5)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_a_tokenizer_without_pad_token_scores_the_same(tiny_model, tokenizer, share_prompt):
    pad_less = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    pad_less.pad_token = None
    expected = score_options(tiny_model, tokenizer, CONTEXTS, OPTIONS, share_prompt=share_prompt)
    got = score_options(tiny_model, pad_less, CONTEXTS, OPTIONS, share_prompt=share_prompt)
    assert [o["logprob"] for q in got for o in q] == pytest.approx([o["logprob"] for q in expected for o in q],
                                                                  abs=1e-5)


def test_one_option_per_row_scores_the_same(attention_model, tokenizer, monkeypatch):
    # the layout for kernels without 4D masks (flash attention): each option a row of its own on its prompt's cache
    monkeypatch.setattr(loglik, "TREE_ATTENTION", ())
    results = score_options(attention_model, tokenizer, CONTEXTS, OPTIONS)
    for context, options, result in zip(CONTEXTS, OPTIONS, results):
        expected = plain_scores(attention_model, tokenizer, context, options)
        assert [r["logprob"] for r in result] == pytest.approx(expected, abs=1e-5)


TAIL_CASES = [
    (CONTEXTS[0], OPTIONS[0]),
    ("你好\n人民日", ["报", "本", "\n报"]),     # 人民日 + 报 merge across the boundary: the tail sees it too
    ("人民\n日", ["报", "日报社", " 报"]),       # the merge starts at the tail's first character
    ("前面\n后面 有空格 ", [" A", "\n\n", "日报"]),  # spaces (▁) at the boundary, newlines in the option
    ("a\n", ["b", "人民日报"]),                 # nothing after the last newline
    ("没有换行", ["世界"]),                      # no newline: encoded jointly in full
    ("第一行\n<s>本题", ["A", "B"]),             # an added token's text: encoded jointly in full
    ("第一行\n本题<", ["s>", "A"]),              # ... also when it straddles the boundary
]


def test_tail_tokenization_equals_the_joint_tokenization(tokenizer, monkeypatch):
    full = []
    encode_many = loglik.encode_many
    monkeypatch.setattr(loglik, "encode_many", lambda tok, texts: full.extend(texts) or encode_many(tok, texts))
    contexts, continuations = [c for c, _ in TAIL_CASES], [o for _, o in TAIL_CASES]
    context_ids = [encode(tokenizer, c) for c in contexts]
    joints = loglik.joint_encodings(tokenizer, contexts, context_ids, continuations)
    assert joints == [[encode(tokenizer, c + o) for o in options] for c, options in TAIL_CASES]
    # only the contexts without a newline, or with an added token's text, were tokenized in full
    assert full == ["没有换行世界", "第一行\n<s>本题A", "第一行\n<s>本题B", "第一行\n本题<s>", "第一行\n本题<A"]
    for (context, options), ids, joint in zip(TAIL_CASES, context_ids, joints):
        for option, option_joint in zip(options, joint):
            assert split_continuation(tokenizer, ids, context, option, option_joint) == split_continuation(
                tokenizer, ids, context, option)
    merged = split_continuation(tokenizer, context_ids[1], contexts[1], "报", joints[1][0])
    assert merged[1] == "after_newline"  # the boundary merge still falls back, as with the full joint encoding


def test_tail_tokenization_needs_a_newline_that_never_merges(tokenizer):
    import copy
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    newline = spec["model"]["vocab"]["<0x0A>"]
    assert loglik._barrier_in(spec) == newline
    merged = copy.deepcopy(spec)
    merged["model"]["merges"].append(["<0x0A>", "本"])
    normalized = {**spec, "normalizer": {"type": "NFKC"}}
    split = {**spec, "pre_tokenizer": {**spec["pre_tokenizer"], "split": True}}
    dropout = {**spec, "model": {**spec["model"], "dropout": 0.1}}
    inside = copy.deepcopy(spec)
    inside["model"]["vocab"]["\n本"] = len(inside["model"]["vocab"])
    for unusable in (merged, normalized, split, dropout, inside):
        assert loglik._barrier_in(unusable) is None
