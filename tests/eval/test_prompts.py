"""Prompts against DESIGN.md's strings, written out literally here (not rebuilt from the same formula)."""

import pytest

from panda.eval.benchmarks import Question, read_benchmark
from panda.eval.prompts import build_prompt, choose_exemplars

LOGIQA_ZERO_SHOT = (
    "阅读下面的文章并从选项中选择的答案回答问题：\n\n\n\n"
    "甲比乙高，乙比丙高。\n\n问题：\n谁最矮？\n\n选项：\nA: 甲\nB: 乙\nC: 丙\nD: 无法判断\n\n\n本题的答案是："
)

LOGIQA_TWO_SHOT = (
    "阅读下面的文章并从选项中选择的答案回答问题：\n\n"
    "文章：\n所有的鸟都会飞。企鹅是鸟。\n\n问题：\n由此可以推出：\n\n选项：\nA: 企鹅会飞\nB: 企鹅不会飞\nC: 有的鸟不会飞\n"
    "D: 无法判断\n\n\n答案是 A"
    "\n\n"
    "文章：\n如果下雨，地面就会湿。地面没有湿。\n\n问题：\n由此可以推出：\n\n选项：\nA: 下雨了\nB: 没有下雨\nC: 地面湿了\n"
    "D: 无法判断\n\n\n答案是 B"
    "\n\n"
    "甲比乙高，乙比丙高。\n\n问题：\n谁最矮？\n\n选项：\nA: 甲\nB: 乙\nC: 丙\nD: 无法判断\n\n\n本题的答案是："
)

C3_ZERO_SHOT = (
    "阅读下面的文章并从选项中选择的答案回答问题：\n\n\n\n"
    "男：你好，今天天气怎么样？ 女：很好，我们去公园吧。\n\n问题：\n他们要去哪里？\n\n选项：\nA: 公园\nB: 学校\nC: 商店\n"
    "\n\n本题的答案是："
)

C3_ONE_SHOT = (
    "阅读下面的文章并从选项中选择的答案回答问题：\n\n"
    "文章：\n人民日报社论指出，今年经济发展很快。\n\n问题：\n社论说了什么？\n\n选项：\nA: 经济发展很慢\nB: 经济发展很快\n"
    "C: 没有说\nD: 不知道\n\n\n答案是 B"
    "\n\n"
    "男：你好，今天天气怎么样？ 女：很好，我们去公园吧。\n\n问题：\n他们要去哪里？\n\n选项：\nA: 公园\nB: 学校\nC: 商店\n"
    "\n\n本题的答案是："
)


def test_logiqa_v2_prompts_zero_and_two_shot(logiqa_file):
    first, second, question = read_benchmark(logiqa_file, "logiqa_v2")
    assert build_prompt(question) == LOGIQA_ZERO_SHOT
    assert build_prompt(question, [first, second]) == LOGIQA_TWO_SHOT


def test_c3_prompts_zero_and_one_shot(c3_file):
    question, _, exemplar = read_benchmark(c3_file, "c3")
    assert build_prompt(question) == C3_ZERO_SHOT
    assert build_prompt(question, [exemplar]) == C3_ONE_SHOT


def test_exemplars_are_seeded_per_question_and_never_the_question_itself(logiqa_file):
    pool = read_benchmark(logiqa_file, "logiqa_v2")
    question = pool[2]
    draws = {tuple(q.index for q in choose_exemplars(question, pool, 2, seed=0)) for _ in range(3)}
    assert len(draws) == 1 and 2 not in next(iter(draws))
    assert sorted(next(iter(draws))) == [0, 1]
    seeds = {tuple(q.index for q in choose_exemplars(question, pool, 1, seed=s)) for s in range(20)}
    assert seeds == {(0,), (1,)}  # the seed matters
    assert choose_exemplars(question, pool, 0, seed=0) == []
    with pytest.raises(ValueError, match="3-shot prompts need at least 3 exemplars"):
        choose_exemplars(question, pool, 3, seed=0)


def test_options_beyond_four_get_further_letters():
    question = Question(0, "c", "q", ("1", "2", "3", "4", "5"), 4)
    assert build_prompt(question).endswith("选项：\nA: 1\nB: 2\nC: 3\nD: 4\nE: 5\n\n\n本题的答案是：")
