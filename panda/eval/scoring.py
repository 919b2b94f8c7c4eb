"""One batch of prepared questions → one output record per question, under either protocol or both.

This is the single code path behind ``lightning_main.py validate``
(:class:`~panda.eval.module.MultipleChoiceEvaluator`), periodic evaluation during ``fit``
(:class:`~panda.eval.callback.PeriodicEvaluation`) and :func:`panda.eval.evaluate`. A prepared question (built by
:mod:`panda.eval.datamodule`) is a plain dict::

    {"index": 7, "origin": "c3-d.json:[3].questions[1]", "prompt": "阅读下面的文章…本题的答案是：",
     "options": ["…", "…"], "label": 1}

and its record keeps everything needed to recompute the result without the model::

    {"index": 7, "origin": …, "gold": "B", "prompt": <the exact generation prompt = log-likelihood context>,
     "prompt_tokens": 312, "subject": "…" (exam suites only),
     "generate": {"generated": "B。因为…", "prediction": "B", "correct": true},
     "loglik": {"options": [{"continuation", "logprob", "tokens", "chars", "split"}, …],
                "prediction": "B", "prediction_norm": "A", "correct": true, "correct_norm": false}}

``gold`` is None for a question none of whose options is correct (a C3 answer matching no choice): it is scored
wrong under both protocols, as the reference scored it. The generation prompt is cut to its first
``max_prompt_tokens`` tokens (the reference's 2048) while the log-likelihood context is not (it is our protocol;
the over-length warning below says which prompts exceed the model's positions).
``tokens`` counts the continuation's tokens, ``chars`` its characters (the ``acc_norm`` divisor), ``split`` how it
was tokenized after the prompt (``joint``, ``after_newline`` or ``separate``, see :mod:`panda.eval.loglik`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch

from panda.eval.benchmarks import LETTERS
from panda.eval.generation import REFERENCE_MAX_PROMPT_TOKENS, generate_answers
from panda.eval.loading import encode_many
from panda.eval.loglik import choose, score_options
from panda.eval.metrics import QuestionMean

Protocol = Literal["generate", "loglik", "both"]
Continuation = Literal["option", "letter"]

METRIC_NAMES = {
    "generate": ("generate/acc", "generate/unparseable_rate"),
    "loglik": ("loglik/acc", "loglik/acc_norm"),
}


def protocols(protocol: Protocol) -> tuple[str, ...]:
    return ("generate", "loglik") if protocol == "both" else (protocol,)


def continuations(question: dict, continuation: Continuation) -> list[str]:
    """What the log-likelihood protocol scores after the prompt: the option texts, or the letters ``A``, ``B``, …."""
    if continuation == "letter":
        return list(LETTERS[: len(question["options"])])
    return list(question["options"])


def score_batch(model, tokenizer, questions: Sequence[dict], *, protocol: Protocol = "both",
                max_new_tokens: int = 64, continuation: Continuation = "option", share_prompt: bool = True,
                max_prompt_tokens: int | None = REFERENCE_MAX_PROMPT_TOKENS) -> list[dict]:
    """Score ``questions`` with ``model`` (a Hugging Face causal LM in eval mode); one record per question."""
    prompts = [q["prompt"] for q in questions]
    prompt_ids = encode_many(tokenizer, prompts)  # once, for the token counts and both protocols
    records = [{"index": q["index"], "origin": q.get("origin", ""),
                "gold": LETTERS[q["label"]] if q["label"] >= 0 else None, "prompt": q["prompt"],
                "prompt_tokens": len(ids), **({"subject": q["subject"]} if q.get("subject") else {})}
               for q, ids in zip(questions, prompt_ids)]
    if "generate" in protocols(protocol):
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens, prompt_ids=prompt_ids,
                                   max_prompt_tokens=max_prompt_tokens)
        for record, answer in zip(records, answers):
            record["generate"] = {**answer, "correct": record["gold"] is not None
                                  and answer["prediction"] == record["gold"]}
    if "loglik" in protocols(protocol):
        scores = score_options(model, tokenizer, prompts, [continuations(q, continuation) for q in questions],
                               share_prompt=share_prompt, context_ids=prompt_ids)
        for record, options in zip(records, scores):
            by_sum, by_char = choose(options)
            record["loglik"] = {
                "options": options, "prediction": LETTERS[by_sum], "prediction_norm": LETTERS[by_char],
                "correct": LETTERS[by_sum] == record["gold"], "correct_norm": LETTERS[by_char] == record["gold"],
            }
    _warn_beyond_positions(model, records, max_new_tokens if "generate" in protocols(protocol) else 0)
    return records


def _warn_beyond_positions(model, records: Sequence[dict], new_tokens: int) -> None:
    """Warn when a prompt plus what follows it (new tokens, or the longest option) exceeds the model's positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is None:
        return
    too_long = []
    for record in records:
        option_tokens = [option["tokens"] for option in record.get("loglik", {}).get("options", [])]
        if record["prompt_tokens"] + max([new_tokens, *option_tokens]) > limit:
            too_long.append(record["origin"] or str(record["index"]))
    if too_long:
        warnings.warn(f"{len(too_long)} prompt(s) with what follows them exceed the model's {limit} positions "
                      f"(first: {too_long[0]}); their scores are unreliable")


def make_metrics(protocol: Protocol) -> dict[str, QuestionMean]:
    """One :class:`QuestionMean` per reported number of ``protocol``."""
    return {name: QuestionMean() for p in protocols(protocol) for name in METRIC_NAMES[p]}


OUTCOMES = {
    "generate/acc": lambda r: r["generate"]["correct"],
    "generate/unparseable_rate": lambda r: r["generate"]["prediction"] is None,
    "loglik/acc": lambda r: r["loglik"]["correct"],
    "loglik/acc_norm": lambda r: r["loglik"]["correct_norm"],
}
"""Each reported number's per-question outcome (0/1), read from a record."""


def update_metrics(metrics: dict[str, QuestionMean], records: Sequence[dict]) -> None:
    """Feed the records' per-question outcomes to the metrics made by :func:`make_metrics`."""
    index = torch.tensor([r["index"] for r in records])
    for name, metric in metrics.items():
        metric.update(index.to(metric.device), torch.tensor([float(OUTCOMES[name](r)) for r in records],
                                                            device=metric.device))


def subject_metrics(records: Sequence[dict], protocol: Protocol) -> dict:
    """Per-subject accuracy of an exam suite and its plain mean over subjects (empty without subjects).

    ``records`` are the merged records of all ranks (each question once). Returns ``{"subjects": {subject:
    {"count", metric: value}}, "subject_mean/<metric>": …}`` — the suites' published averages are means over
    subjects (CMMLU's ``get_results``); the question-weighted numbers are the top-level metrics.
    """
    groups: dict[str, list[dict]] = {}
    for record in records:
        if record.get("subject"):
            groups.setdefault(record["subject"], []).append(record)
    if not groups:
        return {}
    names = [name for p in protocols(protocol) for name in METRIC_NAMES[p]]
    subjects = {subject: {"count": len(group), **{name: sum(map(OUTCOMES[name], group)) / len(group)
                                                  for name in names}}
                for subject, group in sorted(groups.items())}
    means = {f"subject_mean/{name}": sum(s[name] for s in subjects.values()) / len(subjects) for name in names}
    return {"subjects": subjects, **means}


def compute_metrics(metrics: dict[str, QuestionMean]) -> dict[str, float | int]:
    """``{"count": n, "generate/acc": …, …}`` — synchronised across ranks, each question counted once."""
    out: dict[str, float | int] = {}
    for name, metric in metrics.items():
        result = metric.compute()
        out[name] = float(result["mean"])
        out["count"] = int(result["count"])
    return out
