"""The reference project's evaluation prompt, byte for byte, zero-shot and k-shot.

The strings are DESIGN.md's, kept literally — including what looks odd, because the published numbers were
measured with them: the instruction and the question are separated by ``"\\n\\n" + exemplars + "\\n\\n"`` (so a
zero-shot prompt has four newlines there), every option line ends in ``"\\n"`` and is then followed by
``"\\n\\n"``, the question block has no ``文章：`` header while an exemplar has one, and an exemplar's answer is
written ``答案是 A`` (space, no colon) while the prompt ends with ``本题的答案是：``::

    阅读下面的文章并从选项中选择的答案回答问题：⏎⏎
    [文章：⏎{context}⏎⏎问题：⏎{question}⏎⏎选项：⏎A: …⏎B: …⏎⏎⏎答案是 B   (k exemplars joined by ⏎⏎)]⏎⏎
    {context}⏎⏎问题：⏎{question}⏎⏎选项：⏎A: …⏎B: …⏎⏎⏎本题的答案是：

k-shot exemplars are drawn from a train file with a generator seeded by ``(seed, question index)``, so each
question's prompt is the same whatever the batch size, rank count or protocol, and a question never serves as its
own exemplar.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from panda.eval.benchmarks import LETTERS, Question

INSTRUCTION = "阅读下面的文章并从选项中选择的答案回答问题："
ANSWER_CUE = "本题的答案是："


def format_options(options: Sequence[str]) -> str:
    """One line per choice, ``"A: text\\n"``, ``"B: text\\n"``, … (the last line keeps its newline)."""
    return "".join(f"{LETTERS[i]}: {option}\n" for i, option in enumerate(options))


def format_exemplar(question: Question) -> str:
    """A solved example: ``文章：\\n{context}\\n\\n问题：\\n{question}\\n\\n选项：\\n{options}\\n\\n答案是 {letter}``."""
    return (f"文章：\n{question.context}\n\n问题：\n{question.question}\n\n选项：\n"
            f"{format_options(question.options)}\n\n答案是 {question.gold_letter}")


def build_prompt(question: Question, exemplars: Sequence[Question] = ()) -> str:
    """The reference prompt for ``question``, with ``exemplars`` (empty for zero-shot) before it."""
    shots = "\n\n".join(format_exemplar(exemplar) for exemplar in exemplars)
    body = f"{question.context}\n\n问题：\n{question.question}\n\n选项：\n{format_options(question.options)}"
    return INSTRUCTION + "\n\n" + shots + "\n\n" + body + "\n\n" + ANSWER_CUE


def choose_exemplars(question: Question, pool: Sequence[Question], shots: int, seed: int) -> list[Question]:
    """``shots`` exemplars for ``question`` drawn from ``pool`` without replacement, seeded per question.

    A pool entry with the same context, question and options as ``question`` is never chosen (a train file that
    overlaps the evaluated set must not leak the answer), nor one without a correct option (``label == -1``).

    Args:
        question: The question being asked.
        pool: Candidate exemplars (the train file's questions).
        shots: How many to draw.
        seed: Run seed; the draw depends only on ``(seed, question.index)``.
    """
    if shots <= 0:
        return []
    key = (question.context, question.question, question.options)
    candidates = [c for c in pool if (c.context, c.question, c.options) != key and c.label >= 0]
    if len(candidates) < shots:
        raise ValueError(f"{shots}-shot prompts need at least {shots} exemplars besides the question itself; "
                         f"the train file has {len(candidates)} for {question.origin}")
    rng = random.Random(f"{seed}:{question.index}")
    return rng.sample(candidates, shots)
