"""Chinese exam suites in their published formats, with their own standard prompts: C-Eval, CMMLU, AGIEval-zh.

Each suite is a folder of per-subject files; a subject's questions are scored alone and together (per-subject and
averaged accuracy, :func:`panda.eval.scoring.subject_metrics`). ``path`` is one file or the folder of the split to
evaluate; ``train_path`` the folder (or file) of the dev split that k-shot exemplars come from, matched by subject.

- ``ceval`` — ``ceval-exam.zip`` (hkust-nlp/ceval): ``{val,test,dev}/{subject}_{split}.csv`` with the columns
  ``id,question,A,B,C,D,answer,explanation``. Prompt of its ``evaluators`` (``generate_few_shot_prompt``,
  ``format_example``), with the subject's Chinese name from its ``subject_mapping.json``::

      以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。⏎⏎
      {question}⏎A. …⏎B. …⏎C. …⏎D. …⏎答案：{letter}⏎⏎      (k dev exemplars, the first k of the subject's dev file)
      {question}⏎A. …⏎B. …⏎C. …⏎D. …⏎答案：

  Its test split has no public answers (predictions are submitted to cevalbenchmark.com): evaluate ``val``.
- ``cmmlu`` — haonan-li/CMMLU ``data/{dev,test}/{subject}.csv`` with the columns ``,Question,A,B,C,D,Answer``
  (a leading index column). Prompt of its ``src/mp_utils.py`` (``gen_prompt``, ``format_example``)::

      以下是关于{科目}的单项选择题，请直接给出正确答案的选项。⏎⏎
      题目：{question}⏎A. …⏎B. …⏎C. …⏎D. …⏎答案是：{letter}⏎⏎   (k dev exemplars)
      题目：{question}⏎A. …⏎B. …⏎C. …⏎D. …⏎答案是：

- ``agieval`` — ruixiangcui/AGIEval ``data/v1/{set}.jsonl``, JSON lines ``{"passage", "question", "options":
  ["(A)…", …], "label": "A", …}``; a folder means its Chinese multiple-choice sets (:data:`AGIEVAL_CHINESE_MC`).
  Zero-shot prompt of its ``src/dataset_loader.py`` ``convert_zero_shot``::

      {passage}问题：{question} 选项：(A)… (B)… (C)… (D)…⏎答案：从A到D, 我们应选择

  (its few-shot prompts come from its own ``few_shot_prompts.csv`` with written explanations: not done here).
  Multi-answer questions (a list ``label``, in jec-qa and gaokao-physics) are reported and skipped: they are not
  single-choice.

The official answer-only numbers of C-Eval and CMMLU compare the next-token scores of the letters — here
``protocol: loglik`` with ``continuation: letter`` (configs/eval/ceval.yaml …); ``generate`` reads the first
``A|B|C|D`` of the continuation, as for the Panda benchmarks. A bad row (missing cell, answer letter outside the
options, a file without a required column) is reported with file, line and reason and the rest is evaluated.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from panda.errors import UserError
from panda.eval.benchmarks import LETTERS, BenchmarkReport, Question
from panda.eval.exam_subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS

ExamFormat = Literal["ceval", "cmmlu", "agieval"]
EXAM_FORMATS = ("ceval", "cmmlu", "agieval")
AGIEVAL_CHINESE_MC = ("gaokao-chinese", "gaokao-geography", "gaokao-history", "gaokao-biology", "gaokao-chemistry",
                      "gaokao-physics", "gaokao-mathqa", "logiqa-zh", "jec-qa-kd", "jec-qa-ca")
"""AGIEval's ``chinese_qa_datasets`` (its ``dataset_loader.py``): the Chinese multiple-choice sets."""

COLUMNS = {"ceval": ("question", "A", "B", "C", "D", "answer"), "cmmlu": ("Question", "A", "B", "C", "D", "Answer")}
SPLIT_SUFFIXES = ("_val", "_test", "_dev")


def subject_of(path: Path) -> str:
    """``computer_network_val.csv`` → ``computer_network`` (C-Eval names its files by split; CMMLU does not)."""
    stem = path.stem
    for suffix in SPLIT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def exam_files(path: str | Path, format: ExamFormat) -> list[Path]:
    """The subject files of ``path`` (a file, or a folder: its ``*.csv`` / AGIEval's Chinese ``*.jsonl``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{format} data {path} does not exist (see the README's evaluation section for the files)")
    if format == "agieval":
        files = [path / f"{name}.jsonl" for name in AGIEVAL_CHINESE_MC if (path / f"{name}.jsonl").is_file()]
    else:
        files = sorted(path.glob("*.csv"))
    if not files:
        wanted = "AGIEval's Chinese *.jsonl sets" if format == "agieval" else "*.csv subject files"
        raise UserError(f"{path}: no {wanted} in this folder")
    return files


def _csv_rows(path: Path, format: ExamFormat, report: BenchmarkReport):
    """``(line, row dict)`` per data row; a file lacking a required column is one problem at line 1."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS[format] if c not in (reader.fieldnames or [])]
        if missing:
            report.add(str(path), "1", f"missing column(s) {', '.join(missing)}; a {format} file has the columns "
                                        f"{','.join(COLUMNS[format])} (header: {','.join(reader.fieldnames or [])})")
            return
        line = 2
        for row in reader:
            yield line, row
            line = reader.line_num + 1


def _csv_question(row: dict, format: ExamFormat) -> tuple[str, tuple[str, ...], int]:
    question, *letters, answer = COLUMNS[format]
    cells = [row.get(name) for name in (question, *letters)]
    if any(cell is None or not cell.strip() for cell in cells):
        empty = [name for name, cell in zip((question, *letters), cells) if cell is None or not cell.strip()]
        raise ValueError(f"empty cell(s) {', '.join(empty)}")
    gold = (row.get(answer) or "").strip()
    if gold not in letters:
        hint = " (C-Eval's test split has no public answers: evaluate val)" if format == "ceval" and not gold else ""
        raise ValueError(f"answer {gold!r} is not one of the option letters {', '.join(letters)}{hint}")
    return cells[0], tuple(cells[1:]), letters.index(gold)


def _agieval_question(record) -> tuple[str, str, tuple[str, ...], tuple[str, ...], int]:
    if not isinstance(record, dict) or not isinstance(record.get("question"), str):
        raise ValueError("expected a JSON object with a string 'question'")
    options = record.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError(f"key 'options' must be a list of at least 2 strings, got {options!r:.60}")
    label = record.get("label")
    if isinstance(label, list):
        raise ValueError(f"multi-answer label {label!r} (AGIEval scores it by exact set match; not single-choice)")
    if not isinstance(label, str) or label not in LETTERS[: len(options)]:
        raise ValueError(f"label {label!r} is not one of the option letters A–{LETTERS[len(options) - 1]}")
    texts = tuple(_strip_letter(option, LETTERS[i]) for i, option in enumerate(options))
    return record.get("passage") or "", record["question"], tuple(options), texts, LETTERS.index(label)


def _strip_letter(option: str, letter: str) -> str:
    """``"(B)土地"`` → ``"土地"``: the option text alone, for the ``option`` log-likelihood continuation."""
    for prefix in (f"({letter})", f"（{letter}）", f"{letter}.", f"{letter}．"):
        if option.startswith(prefix):
            return option[len(prefix):].strip() or option
    return option


def read_exam(path: str | Path, format: ExamFormat, *, report: BenchmarkReport | None = None,
              start: int = 0) -> list[tuple[Question, str]]:
    """Every question of one subject file, as ``(question, prompt body)`` (the body is the suite's question block
    without the answer; :func:`exam_prompt` puts the header and exemplars before it).

    Args:
        path: One subject file.
        format: ``ceval``, ``cmmlu`` or ``agieval``.
        report: Receives bad rows (file, line, reason).
        start: Index of the first question (question indices run across all subject files).
    """
    path = Path(path)
    report = report if report is not None else BenchmarkReport(str(path))
    subject = subject_of(path)
    out: list[tuple[Question, str]] = []
    if format == "agieval":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    passage, question, shown, texts, label = _agieval_question(json.loads(line))
                except (ValueError, json.JSONDecodeError) as error:
                    report.add(str(path), str(number), str(error))
                    continue
                body = f"{passage}问题：{question} 选项：{' '.join(shown)}\n答案：从A到{LETTERS[len(shown) - 1]}, 我们应选择"
                out.append((Question(start + len(out), passage, question, texts, label, f"{path}:{number}",
                                     subject), body))
        return out
    for line, row in _csv_rows(path, format, report):
        try:
            question, options, label = _csv_question(row, format)
        except ValueError as error:
            report.add(str(path), str(line), str(error))
            continue
        out.append((Question(start + len(out), "", question, options, label, f"{path}:{line}", subject),
                    _csv_block(question, options, format)))
    return out


def _csv_block(question: str, options: tuple[str, ...], format: ExamFormat, answer: str = "") -> str:
    lines = "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(options))
    if format == "ceval":
        return f"{question}{lines}\n答案：" + (f"{answer}\n\n" if answer else "")
    return f"题目：{question}{lines}\n答案是：" + (f"{answer}\n\n" if answer else "")


def exam_header(format: ExamFormat, subject: str) -> str:
    """The suite's instruction line for ``subject`` (its Chinese name where the suite publishes one)."""
    if format == "ceval":
        return f"以下是中国关于{CEVAL_SUBJECTS.get(subject, subject)}考试的单项选择题，请选出其中的正确答案。\n\n"
    if format == "cmmlu":
        return f"以下是关于{CMMLU_SUBJECTS.get(subject, subject)}的单项选择题，请直接给出正确答案的选项。\n\n"
    return ""


def exam_prompt(format: ExamFormat, subject: str, body: str, exemplars: list[Question]) -> str:
    """Header, the solved exemplars (the first k dev questions of the subject) and the question block."""
    shots = "".join(_csv_block(q.question, q.options, format, q.gold_letter) for q in exemplars)
    return exam_header(format, subject) + shots + body


def _dev_pool(train_path: str | Path, format: ExamFormat, subject: str, shots: int) -> list[Question]:
    root = Path(train_path)
    candidates = [root] if root.is_file() else [root / f"{subject}_dev.csv", root / f"{subject}.csv"]
    dev = next((c for c in candidates if c.is_file()), None)
    if dev is None:
        raise UserError(f"{shots}-shot {format} prompts for subject {subject!r} need its dev file: none of "
                        f"{', '.join(map(str, candidates))} exists (train_path = the dev folder)")
    pool = [question for question, _ in read_exam(dev, format)]
    if len(pool) < shots:
        raise UserError(f"{dev}: {shots}-shot prompts need {shots} dev questions for subject {subject!r}, "
                        f"the file has {len(pool)} readable")
    return pool[:shots]


def prepare_exam(path: str | Path, format: ExamFormat, *, shots: int = 0, train_path: str | Path | None = None,
                 report: BenchmarkReport | None = None) -> list[dict]:
    """Every question of the suite at ``path`` with its prompt, as :func:`panda.eval.scoring.score_batch` takes them.

    Args:
        path: A subject file or the folder of the evaluated split.
        format: ``ceval``, ``cmmlu`` or ``agieval``.
        shots: Exemplars per prompt: the first ``shots`` questions of the subject's dev file (C-Eval, CMMLU).
        train_path: The dev folder (or one dev file) when ``shots > 0``.
        report: Receives every bad row; its ``questions`` is set to the count read.
    """
    report = report if report is not None else BenchmarkReport(str(path))
    if shots > 0 and format == "agieval":
        raise UserError("agieval: only zero-shot prompts are built here (AGIEval's few-shot prompts are its own "
                        "few_shot_prompts.csv with written explanations); set shots: 0")
    if shots > 0 and train_path is None:
        raise UserError(f"shots={shots} needs train_path: the {format} dev folder (k-shot exemplars per subject)")
    prepared: list[dict] = []
    for file in exam_files(path, format):
        read = read_exam(file, format, report=report, start=len(prepared))
        if not read:
            continue
        subject = read[0][0].subject
        exemplars = _dev_pool(train_path, format, subject, shots) if shots > 0 else []
        prepared += [{"index": q.index, "origin": q.origin, "options": list(q.options), "label": q.label,
                      "subject": subject, "prompt": exam_prompt(format, subject, body, exemplars)}
                     for q, body in read]
    report.questions = len(prepared)
    return prepared
