"""Multiple-choice benchmark files → :class:`Question` s, with every bad record reported by file and line/index.

Three formats, all read exactly as the reference project published them (DESIGN.md):

- ``logiqa_v2``: JSON lines ``{"text": context, "question": str, "options": [str, ...], "answer": int}``.
- ``c3`` (C3-d and C3-m): one JSON array of ``[[line, ...], [{"question", "choice", "answer"}, ...], id]``; the
  context is the lines joined with ``" "``, one question per ``(element, question)`` pair, and the label is the
  index of the LAST choice equal to ``answer`` — the reference's ``DreamReader`` loops over the choices and keeps
  overwriting the label. An ``answer`` equal to no choice is kept with ``label = -1`` and scored wrong under every
  protocol (the reference's label -1 became the letter ``E``, which its ``A|B|C|D`` rule never extracts); it is
  reported, not dropped. A malformed question skips only itself, never the other questions of its element.
- ``multiple_choice`` (any other set): JSON lines ``{"context": str (optional), "question": str,
  "options": [str, ...], "answer": int | "A".."Z"}``.

A record that cannot be read is never dropped silently: it becomes a :class:`BenchmarkProblem` (path, line or
``[index]``, reason) in the returned report, or raises :class:`BadBenchmarkRecordError` at once with
``strict=True``. The index of a question is its position in the file's question order, so it is stable across
runs, ranks and protocols (metrics and outputs are keyed by it).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BenchmarkFormat = Literal["logiqa_v2", "c3", "multiple_choice"]
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Args:
        index: Position in the benchmark's question order (0-based, stable).
        context: The passage or dialogue (may be empty).
        question: The question text.
        options: The choices, in file order (letter ``A`` is ``options[0]``).
        label: Index of the correct option; -1 when no option is correct (a C3 answer matching no choice:
            scored wrong, as the reference did).
        origin: ``"path:line"`` (JSON lines) or ``"path:[element].questions[k]"`` (C3), for reports.
    """

    index: int
    context: str
    question: str
    options: tuple[str, ...]
    label: int
    origin: str = ""
    subject: str = ""

    @property
    def gold_letter(self) -> str | None:
        """The correct option's letter, or None when no option is correct (``label == -1``)."""
        return LETTERS[self.label] if self.label >= 0 else None


@dataclass(frozen=True)
class BenchmarkProblem:
    """A record that could not be read (or, with ``kept``, was read but is scored wrong): where and why."""

    path: str
    location: str
    reason: str
    kept: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.location}: {self.reason}" + (" (kept, scored wrong)" if self.kept else "")


class BadBenchmarkRecordError(ValueError):
    """Raised at the first bad record when reading with ``strict=True``."""


@dataclass
class BenchmarkReport:
    """What reading a benchmark file found: questions kept and records skipped (with reasons)."""

    path: str
    questions: int = 0
    problems: list[BenchmarkProblem] = field(default_factory=list)

    def add(self, path: str, location: str, reason: str, kept: bool = False) -> None:
        self.problems.append(BenchmarkProblem(path, location, reason, kept))

    @property
    def skipped(self) -> int:
        return sum(not problem.kept for problem in self.problems)

    def summary(self) -> str:
        kept = len(self.problems) - self.skipped
        lines = [f"{self.path}: {self.questions} questions, {self.skipped} bad records skipped"
                 + (f", {kept} kept and scored wrong" if kept else "")]
        lines += [f"  {problem}" for problem in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


def _check_options(options, what: str) -> tuple[str, ...]:
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{what} must be a list of at least 2 strings, got {options!r:.80}")
    if len(options) > len(LETTERS):
        raise ValueError(f"{what} has {len(options)} choices; at most {len(LETTERS)} can be lettered")
    return tuple(options)


def _logiqa_v2(record) -> tuple[str, str, tuple[str, ...], int]:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key, kind in (("text", str), ("question", str)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"key {key!r} must be a string")
    options = _check_options(record.get("options"), "key 'options'")
    answer = record.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise ValueError(f"key 'answer' must be an integer in [0, {len(options)}), got {answer!r}")
    return record["text"], record["question"], options, answer


def _multiple_choice(record) -> tuple[str, str, tuple[str, ...], int]:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    context = record.get("context", "")
    if not isinstance(context, str) or not isinstance(record.get("question"), str):
        raise ValueError("keys 'context' (optional) and 'question' must be strings")
    options = _check_options(record.get("options"), "key 'options'")
    answer = record.get("answer")
    if isinstance(answer, str) and len(answer) == 1 and answer in LETTERS[: len(options)]:
        answer = LETTERS.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise ValueError(f"key 'answer' must be an option index or letter for {len(options)} options, got {answer!r}")
    return context, record["question"], options, answer


def _c3_question(item, k: int) -> tuple[str, tuple[str, ...], int]:
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise ValueError(f"questions[{k}] must be an object with a string 'question'")
    options = _check_options(item.get("choice"), f"questions[{k}].choice")
    matches = [i for i, option in enumerate(options) if option == item.get("answer")]
    return item["question"], options, matches[-1] if matches else -1


def _c3_element(element) -> tuple[str, list]:
    if not (isinstance(element, list) and len(element) >= 2 and isinstance(element[0], list)
            and isinstance(element[1], list)):
        raise ValueError("expected [[context lines], [questions], id]")
    if not all(isinstance(line, str) for line in element[0]):
        raise ValueError("context lines must be strings")
    return " ".join(element[0]), element[1]


def _json_lines(path: Path):
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"{number}", json.loads(line), None
            except json.JSONDecodeError as error:
                yield f"{number}", None, f"invalid JSON ({error.msg} at column {error.colno})"


def read_benchmark(path: str | Path, format: BenchmarkFormat, *, strict: bool = False,
                   report: BenchmarkReport | None = None) -> list[Question]:
    """Read every question of a benchmark file (see the module docstring for the formats).

    Args:
        path: The benchmark file.
        format: ``"logiqa_v2"``, ``"c3"`` or ``"multiple_choice"``.
        strict: Raise :class:`BadBenchmarkRecordError` at the first bad record instead of skipping it.
        report: Filled with the counts and the problems found (pass one to see what was skipped).
    """
    path = Path(path)
    report = report if report is not None else BenchmarkReport(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    questions: list[Question] = []

    def bad(location: str, reason: str, kept: bool = False) -> None:
        problem = BenchmarkProblem(str(path), location, reason, kept)
        if strict and not kept:
            raise BadBenchmarkRecordError(f"{problem} (format {format!r})")
        report.problems.append(problem)

    if format == "c3":
        try:
            elements = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BadBenchmarkRecordError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); C3 files are one "
                                          "JSON array") from error
        if not isinstance(elements, list):
            raise BadBenchmarkRecordError(f"{path}: C3 files are one JSON array, got {type(elements).__name__}")
        for i, element in enumerate(elements):
            try:
                context, items = _c3_element(element)
            except ValueError as error:
                bad(f"[{i}]", str(error))
                continue
            for k, item in enumerate(items):
                try:
                    question, options, label = _c3_question(item, k)
                except ValueError as error:
                    bad(f"[{i}]", str(error))
                    continue
                if label < 0:
                    bad(f"[{i}]", f"questions[{k}].answer {item.get('answer')!r:.40} is not one of its choices", kept=True)
                questions.append(Question(len(questions), context, question, options, label,
                                          f"{path}:[{i}].questions[{k}]"))
    elif format in ("logiqa_v2", "multiple_choice"):
        parse = _logiqa_v2 if format == "logiqa_v2" else _multiple_choice
        for line, record, error in _json_lines(path):
            if error is None:
                try:
                    context, question, options, label = parse(record)
                except ValueError as exc:
                    error = str(exc)
            if error is not None:
                bad(line, error)
                continue
            questions.append(Question(len(questions), context, question, options, label, f"{path}:{line}"))
    else:
        raise ValueError(f"unknown benchmark format {format!r}; expected one of logiqa_v2, c3, multiple_choice")
    report.questions = len(questions)
    return questions
