"""Corpus readers: every format Panda trains on, turned into :class:`~panda.data.records.Example` s.

A :class:`CorpusSource` is one entry of the data config (name, files, format, mixture weight, loss policy). Its
:meth:`~CorpusSource.read` streams examples whose *segments* carry the prompt/response split, so the tokenizer
stage can build an exact loss mask from the boundaries instead of guessing prompt lengths as the reference did.

Formats (``format:``)::

    coig   JSON array; element {"inputs", "targets"}              -> [prompt=inputs | response=targets]
           or a list of such dicts (a multi-turn conversation)    -> see "Multi-turn" below
    wudao  JSON array of {"title", "content", ...}                 -> [title + " " + content]  (full loss)
    c4     *.json.gz JSON lines of {"text", ...}                   -> [text]                   (full loss)
    jsonl  JSON lines; {"text"}                                    -> [text]                   (full loss)
           or {"instruction": str | list[str], "input", "output"}  -> [instruction + " " + input | output]
    flan   {"inputs", "targets"}                                   -> [prompt=inputs | response=targets]
    <name> a public corpus in its published layout, read through a named field template   (see panda.data.templates:
           wiki2019zh news2016zh baike2018qa webtext2019zh translation2019zh coig_translated coig_instruction
           coig_exam coig_counterfactual)
    template  your own field template, declared in YAML under ``template:``

``join`` is written between a prompt and its response (at the start of the response segment, so it is tokenized as
in running text); ``""`` by default, ``" "`` for the reference's ``inputs + " " + targets``. ``max_records`` reads
only a source's first records (the reference's FLAN sampler took the head of every file).

Any format may be stored either way: a file whose first non-whitespace character is ``[`` is read as one JSON
array (unless its first line is a complete array and more lines follow: JSON lines of arrays, e.g. one COIG
conversation per line), a file holding one JSON object spread over several lines as that one record (COIG's
one-conversation files), any other file as JSON lines; ``*.gz`` files are decompressed on the fly. JSON lines are
streamed line by line (each line's bytes decoded separately, so one undecodable line costs one record, not the
file). A JSON array file is parsed whole, one file at a time (no incremental parser such as ijson is used): memory
is bounded by the largest array file, never by the corpus. Blank lines are not records and are not counted.

Loss policy (``loss:``). ``None`` picks the format's default: ``full`` for wudao, c4 and plain-text records,
``conditional`` (prompt untrained, response trained) for coig, flan and instruction records. ``loss: full`` on an
instruction format trains every token, prompt included: each prompt segment is merged into the response segment
that follows it, so the text is unchanged and the EOS the tokenizer stage appends to every trained segment still
closes only responses (a conversation ``(in0 | tg0)("\\n\\n"+in1 | tg1)`` becomes ``(in0+tg0)("\\n\\n"+in1+tg1)``,
all trained), never a prompt. ``loss: conditional`` on wudao masks ``title + " "`` and trains the content; plain
text (c4, ``{"text"}`` records) has no prompt and is always trained, so ``loss: conditional`` is refused for c4.

Instruction records: the prompt is ``instruction + " " + input`` when ``input`` is non-blank, else just
``instruction`` (or just ``input`` when there is no instruction); the reference added the space even for an empty
input. A list ``instruction`` means one of its strings is chosen by ``random.Random(f"{seed}:{file name}:{line}")``:
deterministic per record, the same in every process, rank and epoch, and changed by the source's ``seed``.
An empty ``output`` is a bad record (skipped and reported), like the reference's silent skip but counted.

Prompts with responses and conversations are rendered by the source's ``chat_format``
(:mod:`panda.data.chat_format`, the same code that prompts the trained model in ``panda generate``): ``reference``
(the default, shown below: no role markers) or ``roles`` (``用户: …\\n助手:`` lines).

Multi-turn (``multi_turn:``), for a COIG conversation ``[{in0, tg0}, {in1, tg1}, {in2, tg2}]``:

* ``"conversation"`` (default) — one example, user turns untrained, assistant turns trained::

      (in0, False) (tg0, True) ("\\n\\n" + in1, False) (tg1, True) ("\\n\\n" + in2, False) (tg2, True)

  The "\\n\\n" between turns sits at the start of the next (untrained) user segment, after the EOS the tokenizer
  stage appends to every trained segment, so the text reads ``in0 tg0</s>\\n\\nin1 tg1</s>\\n\\nin2 tg2</s>``
  (written here with spaces for legibility; segments are joined with nothing). A turn's inputs are followed by
  its targets directly, exactly as for a single-turn COIG record.

* ``"panda_compat"`` — the reference's flattening: one example per turn, only that turn's targets trained::

      turn k prompt = "\\n\\n".join([in0, tg0, ..., in(k-1), tg(k-1)]) + "\\n\\n" + ink    (k >= 1)
      turn 0 prompt = "\\n\\n" + in0      (the reference's empty history still adds the separator)
      example k     = (prompt, False) (tgk, True),  meta {"turn": k}

Every example's ``origin`` is ``"path:line"`` (1-based, JSON lines) or ``"path:[index]"`` (0-based, JSON arrays);
all turns of a ``panda_compat`` conversation share the element's origin. Bad input never stops a read unless
``strict``: see :mod:`panda.data.report`. Text is never rewritten: segments hold the corpus strings verbatim.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import itertools
import json
import math
import random
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from panda.data.chat_format import ChatFormat, ChatFormatName
from panda.data.records import Example, Segment
from panda.data.report import BadRecordError, ReadReport, RecordProblem
from panda.data.templates import TEMPLATES, FieldTemplate, TemplateError
from panda.errors import ConfigError

Format = Literal["coig", "wudao", "c4", "jsonl", "flan", "template", "wiki2019zh", "news2016zh", "baike2018qa",
                 "webtext2019zh", "translation2019zh", "coig_translated", "coig_instruction", "coig_exam",
                 "coig_counterfactual"]
TEMPLATE_PROBE = 20
"""Records of a templated source's first file checked at start for every field its template names."""

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "coig": (".json", ".jsonl"),
    "wudao": (".json", ".jsonl"),
    "c4": (".json.gz", ".jsonl.gz"),
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
    "flan": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
}
"""File name endings a directory path picks up, per built-in format (directories are searched recursively);
templated formats pick up the template's ``files`` patterns."""

DEFAULT_LOSS: dict[str, Literal["full", "conditional"]] = {
    "coig": "conditional", "wudao": "full", "c4": "full", "jsonl": "conditional", "flan": "conditional",
}
"""Loss policy when ``loss`` is None. For ``jsonl`` it applies to instruction records; text records are full."""



class _RecordError(Exception):
    """A record is unusable; the message is the reason shown to the user."""


@dataclass
class CorpusSource:
    """One corpus in the data mix, declared in YAML.

    Args:
        name: Short name used in logs, reports and ``source_ids`` (e.g. ``coig``, ``wudao``).
        paths: A file, a glob (``data/wudao/*.json``) or a directory (every file with the format's extensions,
            searched recursively, sorted), or a list of those.
        format: Record layout: ``coig``, ``wudao``, ``c4``, ``jsonl`` or ``flan`` (see the module docstring).
        weight: Mixture weight relative to the other sources (``2.0`` = sampled twice as often per record as a
            source with weight 1.0); read by the data module, not here.
        loss: ``full`` (every token trained), ``conditional`` (prompts untrained), or ``None`` for the
            format's default (full for wudao/c4/plain text, conditional for coig/flan/instructions).
        multi_turn: How a COIG conversation becomes examples: ``conversation`` (one example, every assistant turn
            trained) or ``panda_compat`` (the reference's one example per turn with "\\n\\n"-joined history).
        strict: Raise :class:`~panda.data.report.BadRecordError` at the first bad record instead of skipping it.
        seed: Seeds the per-record choice among a list of instructions.
        template: With ``format: template``, the field template (keys ``text`` or ``prompt``/``response``,
            ``separator``, ``turns``, ``files``; see :mod:`panda.data.templates`).
        join: Text between a prompt and its response (the reference: ``" "``).
        max_records: Read only the first this many usable records of the source (``None``: all).
        chat_format: How prompts, responses and conversations become text: ``reference`` (no role markers, turns
            joined by blank lines) or ``roles`` (role-marked lines); rendered by :mod:`panda.data.chat_format`,
            the code that prompts the trained model at inference too.
    """

    name: str
    paths: str | list[str]
    format: Format
    weight: float = 1.0
    loss: Literal["full", "conditional"] | None = None
    multi_turn: Literal["conversation", "panda_compat"] = "conversation"
    strict: bool = False
    seed: int = 0
    template: dict | None = None
    join: str = ""
    max_records: int | None = None
    chat_format: ChatFormatName = "reference"

    def __post_init__(self) -> None:
        ChatFormat(self.chat_format, self.multi_turn, self.join)  # an unknown format name fails here, naming it
        known = sorted(EXTENSIONS) + ["template"] + sorted(TEMPLATES)
        if self.format not in known:
            raise ValueError(f"source {self.name!r}: format {self.format!r} is not one of {known}")
        if (self.format == "template") != (self.template is not None):
            raise ValueError(f"source {self.name!r}: a `template:` goes with `format: template` (and only with it)")
        try:
            self.field_template  # noqa: B018 - validates the template at start
        except ValueError as err:
            raise ValueError(f"source {self.name!r}: {err}") from None
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"source {self.name!r}: max_records must be a positive number or null")
        if self.loss not in (None, "full", "conditional"):
            raise ValueError(f"source {self.name!r}: loss {self.loss!r} must be 'full', 'conditional' or null")
        if self.multi_turn not in ("conversation", "panda_compat"):
            raise ValueError(f"source {self.name!r}: multi_turn {self.multi_turn!r} must be 'conversation' "
                             "or 'panda_compat'")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"source {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}")
        plain = self.format == "c4" or (self.field_template is not None and self.field_template.full_text)
        if plain and self.loss == "conditional":
            raise ValueError(f"source {self.name!r}: {self.format} records are plain text with no prompt to mask; "
                             "use loss: full (or leave it null)")
        if not self.paths:
            raise ValueError(f"source {self.name!r}: paths is empty")

    @property
    def field_template(self) -> FieldTemplate | None:
        """The field template of a templated format (``None`` for the built-in formats)."""
        if self.format == "template":
            return FieldTemplate.from_dict(self.template)
        return TEMPLATES.get(self.format)

    @property
    def conversation_format(self) -> ChatFormat:
        """The :class:`~panda.data.chat_format.ChatFormat` that renders this source's prompts and conversations."""
        return ChatFormat(self.chat_format, self.multi_turn, self.join)

    @property
    def full_loss(self) -> bool:
        """Whether prompts are trained too (the resolved loss policy)."""
        template = self.field_template
        default = DEFAULT_LOSS.get(self.format) or ("full" if template.full_text else "conditional")
        return (self.loss or default) == "full"

    def files(self) -> list[Path]:
        """The files this source reads, in reading order: each path's matches sorted, paths in the given order,
        duplicates dropped. Raises ``FileNotFoundError`` naming the path when a path matches no file."""
        patterns = [self.paths] if isinstance(self.paths, str) else list(self.paths)
        found: list[Path] = []
        for pattern in patterns:
            expanded = Path(pattern).expanduser()
            if any(ch in pattern for ch in "*?["):
                matches = sorted(Path(m) for m in glob.glob(str(expanded), recursive=True) if Path(m).is_file())
                what = "no file matches the glob"
            elif expanded.is_dir():
                names = self._file_patterns()
                matches = sorted(f for f in expanded.rglob("*")
                                 if f.is_file() and any(fnmatch.fnmatch(f.name, n) for n in names))
                what = f"no {'/'.join(names)} file in the directory"
            elif expanded.is_file():
                matches, what = [expanded], ""
            else:
                matches, what = [], "no such file or directory"
            if not matches:
                raise FileNotFoundError(f"source {self.name!r}: {what} {pattern!r}")
            found.extend(m for m in matches if m not in found)
        return found

    def _file_patterns(self) -> tuple[str, ...]:
        template = self.field_template
        return template.files if template is not None else tuple("*" + e for e in EXTENSIONS[self.format])

    def read(self, report: ReadReport | None = None) -> Iterator[Example]:
        """Stream every example of every file (see :meth:`read_file`); at most ``max_records`` records' worth."""
        report = report if report is not None else ReadReport()
        files = self.files()
        if self.field_template is not None:
            self.check_template_fields(files)
        remaining = self.max_records
        for path in files:
            remaining = yield from self.read_file(path, report, limit=remaining)
            if remaining == 0:
                return

    def check_template_fields(self, files: list[Path] | None = None) -> None:
        """Stop (``ValueError`` naming the source and field) when a field the template names occurs in none of
        the first :data:`TEMPLATE_PROBE` records of the source's first file: a misspelt or wrong template."""
        template = self.field_template
        path = (files or self.files())[0]
        seen: set[str] = set()
        probed = 0
        for _, value in _raw_records(path):
            if not isinstance(value, dict):
                continue
            records = [v for k, v in value.items() if k.startswith(template.turns) and isinstance(v, dict)] \
                if template.turns else [value]
            for record in records:
                seen.update(record)
            probed += 1
            if probed >= TEMPLATE_PROBE:
                break
        missing = [field for field in template.fields if field not in seen]
        if probed and missing:
            raise ConfigError(f"source {self.name!r} (format {self.format}): the template names field "
                             f"{missing[0]!r}, which occurs in none of the first {probed} records of {path} "
                             f"(fields there: {sorted(seen)}); fix the template or the format")

    def read_file(self, path: str | Path, report: ReadReport | None = None, limit: int | None = None,
                  records: range | None = None, mark: Mark | None = None) -> Generator[Example, None, int | None]:
        """Stream the examples of one file, counting each record in ``report`` as used or skipped.

        Useful to split a source's files across DataLoader workers or ranks. Bad records are recorded as
        :class:`~panda.data.report.RecordProblem` s and skipped, or raise ``BadRecordError`` when ``strict``.
        With ``limit``, stops after that many usable records and returns how many more may follow (else None).
        ``records`` keeps only the records at those positions (0-based, file order, as :func:`count_records`
        counts them); the others are neither turned into examples nor counted (how a cache build splits a file).
        ``mark``, the :func:`scan_records` mark of ``records.start``, starts reading there instead of at the top.
        """
        report = report if report is not None else ReadReport()
        path = Path(path)
        start = records.start if mark is not None else 0
        resume = (start, mark) if mark is not None else None
        for position, (location, value) in enumerate(_raw_records(path, resume=resume), start=start):
            if limit == 0:
                return 0
            if records is not None and position not in records:
                if position >= records.stop:
                    return limit
                continue
            if isinstance(value, _Unreadable):
                self._problem(report, RecordProblem(str(path), location, value.reason))
                continue
            origin = f"{path}:{location}"
            try:
                examples = self._examples(value, origin, f"{path.name}:{location}")
            except _RecordError as err:
                self._problem(report, RecordProblem(str(path), location, str(err)))
                continue
            report.record_used(self.name, len(examples))
            limit = None if limit is None else limit - 1
            yield from examples
        return limit

    def _problem(self, report: ReadReport, problem: RecordProblem) -> None:
        report.record_problem(self.name, problem)
        if self.strict:
            raise BadRecordError(problem, self.name)

    # ---- one parsed JSON value -> examples -------------------------------------------------------------------

    def _examples(self, value: Any, origin: str, rng_key: str) -> list[Example]:
        template = self.field_template
        if template is not None:
            try:
                rendered = template.render(_object(value, self.format))
            except TemplateError as err:
                raise _RecordError(str(err)) from None
            if isinstance(rendered, str):
                return [self._example(((rendered, True),), origin)]
            if template.turns is None:
                (prompt, response), = rendered
                return [self._exchange(prompt, response, origin)]
            return self._turns(rendered, origin)
        if self.format == "coig" and isinstance(value, list):
            return self._conversation(value, origin)
        record = _object(value, self.format)
        if self.format in ("coig", "flan"):
            return [self._exchange(_string(record, "inputs"), _string(record, "targets"), origin)]
        if self.format == "wudao":
            title, content = _string(record, "title", allow_empty=True), _string(record, "content")
            if not title.strip():
                return [self._example(((content, True),), origin)]
            return [self._example(((title + " ", False), (content, True)), origin)]
        if self.format == "c4":
            return [self._example(((_string(record, "text"), True),), origin)]
        return [self._jsonl(record, origin, rng_key)]

    def _jsonl(self, record: dict, origin: str, rng_key: str) -> Example:
        if not any(k in record for k in ("instruction", "input", "output")):
            if "text" not in record:
                raise _RecordError(f"expected a 'text' key or 'instruction'/'input'/'output' keys, "
                                   f"found {sorted(record)}")
            return self._example(((_string(record, "text"), True),), origin)
        instruction = record.get("instruction")
        if isinstance(instruction, list):
            if not instruction:
                raise _RecordError("'instruction' is an empty array; expected a string or a list of strings")
            for i, choice in enumerate(instruction):
                if not isinstance(choice, str) or not choice.strip():
                    raise _RecordError(f"'instruction'[{i}] must be a non-empty string, got "
                                       f"{_describe(choice)}")
            instruction = random.Random(f"{self.seed}:{rng_key}").choice(instruction)
        elif "instruction" in record:
            instruction = _string(record, "instruction", allow_empty=True)
        extra = _string(record, "input", allow_empty=True) if "input" in record else ""
        output = _string(record, "output")
        parts = [p for p in (instruction or "", extra) if p.strip()]
        if not parts:
            raise _RecordError("'instruction' and 'input' are both missing or empty; expected a prompt")
        return self._exchange(" ".join(parts), output, origin)

    def _exchange(self, prompt: str, response: str, origin: str) -> Example:
        """One prompt and its response, rendered by the source's chat format."""
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self._example(tuple(self.conversation_format.segments(messages)), origin, rendered=True)

    def _conversation(self, turns: list, origin: str) -> list[Example]:
        if not turns:
            raise _RecordError("empty conversation: an array with no turns")
        pairs = []
        for k, turn in enumerate(turns):
            try:
                record = _object(turn, "coig turn")
                pairs.append((_string(record, "inputs"), _string(record, "targets")))
            except _RecordError as err:
                raise _RecordError(f"turn [{k}]: {err}") from None
        return self._turns(pairs, origin)

    def _turns(self, pairs: list[tuple[str, str]], origin: str) -> list[Example]:
        """A conversation's ``(inputs, targets)`` turns as examples, by ``multi_turn`` (see module docstring)."""
        chat = self.conversation_format
        messages = chat.turn_pairs(pairs)
        if self.multi_turn == "conversation":
            return [self._example(tuple(chat.segments(messages)), origin, {"turns": len(pairs)}, rendered=True)]
        return [self._example(tuple(chat.segments(messages[:2 * k + 2], leading_separator=k == 0)), origin,
                              {"turn": k}, rendered=True) for k in range(len(pairs))]

    def _example(self, segments: tuple[tuple[str, bool], ...], origin: str, meta: dict | None = None, *,
                 rendered: bool = False) -> Example:
        """Build the example from its conditional layout (``join`` opening every response that follows a prompt,
        unless the chat format ``rendered`` it already); under full loss each prompt joins the response after it
        (so EOS still closes only responses)."""
        if self.join and not rendered:
            segments = tuple((self.join + text if trained and k and not segments[k - 1][1] else text, trained)
                             for k, (text, trained) in enumerate(segments))
        if self.full_loss:
            merged, pending = [], ""
            for text, trained in segments:
                if trained:
                    merged.append((pending + text, True))
                    pending = ""
                else:
                    pending += text
            segments = tuple(merged) + (((pending, True),) if pending else ())
        return Example(tuple(Segment(t, trained) for t, trained in segments), source=self.name, origin=origin,
                       meta=meta or {})


# ---- field checks ------------------------------------------------------------------------------------------------

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _describe(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _RecordError(f"expected a JSON object ({what} record), got {_describe(value)}")
    return value


def _string(record: dict, key: str, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise _RecordError(f"missing {key!r}; the record has {sorted(record)}")
    value = record[key]
    if not isinstance(value, str):
        raise _RecordError(f"{key!r} must be a string, got {_describe(value)}")
    if not allow_empty and not value.strip():
        raise _RecordError(f"{key!r} is empty")
    return value


# ---- bytes -> parsed JSON values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unreadable:
    reason: str


_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


Mark = tuple[int | None, int]
"""Where a record of a JSON-lines file starts: ``(byte offset or None for a gzip file, lines before it)``."""


def count_records(path: str | Path) -> int:
    """Records of a file in :meth:`CorpusSource.read_file` positions (bad records and whole-file problems count)."""
    return sum(1 for _ in _raw_records(Path(path)))


def scan_records(path: str | Path, every: int) -> tuple[int, dict[int, Mark]]:
    """Records of a file (as :func:`count_records`) and, if it is read as JSON lines, a :data:`Mark` at every
    ``every``-th record (positions ``every``, ``2·every``, …) from which :meth:`CorpusSource.read_file` can start
    without reading — let alone parsing — the records before it. JSON array files and one-object files get none."""
    marks: dict[int, Mark] = {}
    count = sum(1 for _ in _raw_records(Path(path), marks=(every, marks)))
    return count, marks


def _raw_records(path: Path, resume: tuple[int, Mark] | None = None,
                 marks: tuple[int, dict[int, Mark]] | None = None) -> Iterator[tuple[int | str | None, Any]]:
    """Yield ``(location, value)`` per record: ``location`` is a 1-based line number or ``"[index]"``; ``value``
    is the parsed JSON value, or :class:`_Unreadable` for a record (or file) that cannot be parsed.

    A file whose first record line starts with ``[`` is a JSON array file, parsed whole by
    :func:`_array_records` — unless that line is a complete JSON array by itself and more lines follow: then the
    file is JSON lines whose records are arrays (e.g. one COIG conversation per line).

    ``resume = (position, mark)`` starts at the record at ``position`` of a JSON-lines file, whose mark
    :func:`scan_records` recorded (the file's kind was settled by its first record then); ``marks = (every,
    found)`` fills ``found`` with the marks of every ``every``-th record while reading the whole file.
    """
    lineno, saw_record, position = 0, False, 0
    first_array = None  # (lineno, value) of a one-line JSON array: the whole file, or the first of many records
    gzipped = path.name.endswith(".gz")
    with _open(path) as f:
        if resume is not None:
            position, (offset, lineno) = resume
            saw_record = True
            if offset is not None:
                f.seek(offset)
            else:  # gzip: no seeking, but the lines before need no decoding or parsing
                for _ in itertools.islice(f, lineno):
                    pass
        offset = f.tell() if marks is not None and not gzipped else None
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _GZIP_ERRORS as err:
                if first_array is not None:
                    yield first_array
                yield lineno + 1, _Unreadable(f"truncated or corrupt gzip stream ({err}); the rest of the file "
                                              "is lost")
                return
            if marks is not None and position and position % marks[0] == 0 and first_array is None:
                marks[1].setdefault(position, (offset, lineno))  # records before this line: exactly `position`
            if offset is not None:
                offset += len(raw)
            lineno += 1
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                text, problem = "", _Unreadable(f"undecodable bytes at column {err.start + 1} (expected UTF-8 text)")
            else:
                problem = None
            stripped = text.strip()
            if problem is None and not stripped:
                continue
            if not saw_record and problem is None and stripped.startswith("["):
                saw_record = True
                try:
                    first_array = (lineno, json.loads(text.rstrip()))
                except json.JSONDecodeError:
                    yield from _array_records(path)
                    return
                continue
            first_record = not saw_record
            saw_record = True
            if first_array is not None:
                yield first_array
                first_array, position = None, position + 1
            if problem is not None:
                yield lineno, problem
                position += 1
                continue
            try:
                value = json.loads(text.rstrip())
            except json.JSONDecodeError as err:
                if first_record and stripped.startswith("{"):
                    whole = _whole_object(path)
                    if whole is not None:  # one object spread over several lines: the file is one record
                        yield lineno, whole
                        return
                value = _Unreadable(f"malformed JSON at column {err.colno}: {err.msg}")
            yield lineno, value
            position += 1
    if first_array is not None:
        yield from _array_items(first_array[1])
    elif not saw_record:
        yield None, _Unreadable("empty file: no records")


def _whole_object(path: Path) -> dict | None:
    """The file parsed as one JSON object, or None when it is not one (then it is read as JSON lines)."""
    try:
        with _open(path) as f:
            value = json.loads(f.read().decode("utf-8-sig"))
    except (*_GZIP_ERRORS, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _array_records(path: Path) -> Iterator[tuple[int | str | None, Any]]:
    """The elements of a JSON array file, parsed whole (one file in memory at a time)."""
    try:
        with _open(path) as f:
            data = f.read()
    except _GZIP_ERRORS as err:
        yield None, _Unreadable(f"truncated or corrupt gzip stream ({err}); the JSON array cannot be parsed")
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        yield line, _Unreadable("undecodable bytes (expected UTF-8 text); the whole JSON array file is skipped")
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        yield err.lineno, _Unreadable(f"malformed JSON array at column {err.colno}: {err.msg}; the whole file "
                                      "is skipped")
        return
    yield from _array_items(items)


def _array_items(items: list) -> Iterator[tuple[int | str | None, Any]]:
    if not items:
        yield None, _Unreadable("empty file: the JSON array has no records")
    for index, item in enumerate(items):
        yield f"[{index}]", item
