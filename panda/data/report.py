"""Bad-input accounting: every record a reader could not use is named, counted and (in strict mode) fatal.

The reference crashed on the first malformed line deep inside a 15M-record corpus, or silently skipped empty
outputs. Here a reader never drops a record without a trace: each one it cannot turn into an example becomes a
:class:`RecordProblem` (file, line or array index, reason), is logged as a warning (up to a cap, so a corpus full of
bad lines cannot flood the log) and is counted per source in a :class:`ReadReport`. The counts always satisfy
``read == used + skipped``; :meth:`ReadReport.summary` prints them as a table. With ``strict`` the first problem
raises :class:`BadRecordError` instead.

A problem that spoils a whole file or its unreadable tail (an empty file, a JSON array that does not parse, a
truncated gzip stream) counts as one skipped record, so ``skipped`` equals the number of problems of a source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from panda.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordProblem:
    """One record (or file) a reader could not use.

    Args:
        path: The file, as the source listed it.
        line_or_index: 1-based line number for JSON lines files (``12``), ``"[index]"`` (0-based) for elements of
            a JSON array file (``"[3]"``), or ``None`` when the problem concerns the whole file.
        reason: What was wrong and what was expected, e.g. ``"'output' is empty"``.
    """

    path: str
    line_or_index: int | str | None
    reason: str

    @property
    def where(self) -> str:
        """``"path:12"``, ``"path:[3]"`` or ``"path"`` — the same form as :attr:`Example.origin`."""
        if self.line_or_index is None:
            return self.path
        return f"{self.path}:{self.line_or_index}"

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class BadRecordError(UserError, ValueError):
    """Raised at the first bad record of a ``strict`` source. ``problem`` holds the :class:`RecordProblem`.

    A user error (the corpus needs fixing, or ``strict: false``): the ``panda`` command prints it as one line."""

    def __init__(self, problem: RecordProblem, source: str = "") -> None:
        self.problem = problem
        self.source = source
        prefix = f"source {source!r}: " if source else ""
        super().__init__(f"{prefix}bad record at {problem} (strict mode; set strict: false to skip and count it)")

    def __reduce__(self):  # keep the exception picklable across DataLoader worker processes
        return (type(self), (self.problem, self.source))


@dataclass
class SourceCounts:
    """Per-source tallies. ``read == used + skipped`` always holds; ``examples`` can exceed ``used`` when one
    record yields several examples (``multi_turn="panda_compat"``)."""

    read: int = 0
    used: int = 0
    skipped: int = 0
    examples: int = 0


@dataclass
class ReadReport:
    """What the readers saw: counts per source and the problems found.

    One report can be shared by several sources (counts are keyed by source name). Reports built in separate
    processes (DataLoader workers, ranks) combine with :meth:`merge`.

    Args:
        max_warnings: How many problems are logged one by one as warnings; later ones are only counted (and kept
            in :attr:`problems`, up to ``max_kept``). The summary always has every count.
        max_kept: How many :class:`RecordProblem` objects are kept in :attr:`problems` (``None`` = all). Counts
            are exact regardless.
    """

    max_warnings: int = 20
    max_kept: int | None = 10_000
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    problems: list[RecordProblem] = field(default_factory=list)
    warned: int = 0

    def _counts(self, source: str) -> SourceCounts:
        if source not in self.counts:
            self.counts[source] = SourceCounts()
        return self.counts[source]

    def record_used(self, source: str, examples: int = 1) -> None:
        """Count one record of ``source`` that became ``examples`` examples."""
        c = self._counts(source)
        c.read += 1
        c.used += 1
        c.examples += examples

    def record_problem(self, source: str, problem: RecordProblem) -> None:
        """Count one skipped record of ``source``, keep it and log it (until the warning cap is reached)."""
        c = self._counts(source)
        c.read += 1
        c.skipped += 1
        if self.max_kept is None or len(self.problems) < self.max_kept:
            self.problems.append(problem)
        if self.warned < self.max_warnings:
            log.warning("source %r: skipped %s", source, problem)
            self.warned += 1
            if self.warned == self.max_warnings:
                log.warning("further bad records are counted but not logged (ReadReport.max_warnings=%d)",
                            self.max_warnings)

    @property
    def read(self) -> int:
        return sum(c.read for c in self.counts.values())

    @property
    def used(self) -> int:
        return sum(c.used for c in self.counts.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.counts.values())

    def merge(self, other: ReadReport) -> ReadReport:
        """Add ``other``'s counts and problems into this report (in place) and return it."""
        for name, oc in other.counts.items():
            c = self._counts(name)
            c.read += oc.read
            c.used += oc.used
            c.skipped += oc.skipped
            c.examples += oc.examples
        for p in other.problems:
            if self.max_kept is not None and len(self.problems) >= self.max_kept:
                break
            self.problems.append(p)
        self.warned += other.warned
        return self

    def summary(self) -> str:
        """A per-source table of read/used/skipped/examples, then the first few problems.

        Example::

            source          read    used  skipped  examples
            coig               5       4        1         6
            total              5       4        1         6
            1 bad record skipped; first problems:
              data/coig.json:[2]: 'targets' is empty
        """
        rows = [("source", "read", "used", "skipped", "examples")]
        for name, c in self.counts.items():
            rows.append((name, str(c.read), str(c.used), str(c.skipped), str(c.examples)))
        total_examples = sum(c.examples for c in self.counts.values())
        rows.append(("total", str(self.read), str(self.used), str(self.skipped), str(total_examples)))
        width = max(len(r[0]) for r in rows)
        lines = [f"{r[0]:<{width}}  {r[1]:>8}  {r[2]:>8}  {r[3]:>8}  {r[4]:>8}" for r in rows]
        skipped = self.skipped
        if skipped:
            noun = "record" if skipped == 1 else "records"
            shown = self.problems[: self.max_warnings]
            lines.append(f"{skipped} bad {noun} skipped; first problems:")
            lines.extend(f"  {p}" for p in shown)
            if skipped > len(shown):
                lines.append(f"  ... and {skipped - len(shown)} more")
        else:
            lines.append("no bad records")
        return "\n".join(lines)
