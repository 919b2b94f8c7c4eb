"""Errors a user can cause, and how every ``panda`` command reports them.

A :class:`UserError` is a mistake the person running Panda can fix (a misspelt key, a missing corpus, a truncated
checkpoint, a tokenizer that does not fit the model). Commands let it propagate; :func:`report_user_errors` prints
its message as one or two lines on stderr, without a traceback, and exits with status 1 (2 for a command-line
mistake). ``PANDA_DEBUG=1`` or ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix; its message names the key or file and what was expected."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A configuration key, value or command-line argument that cannot be used."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'lr_schedule'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def debugging() -> bool:
    return os.environ.get("PANDA_DEBUG", "").lower() not in ("", "0", "false", "no")


def strip_debug_flag(argv: list[str]) -> list[str]:
    """Remove ``--debug`` from ``argv`` and turn on :func:`debugging` for this process (and its children)."""
    if "--debug" in argv:
        os.environ["PANDA_DEBUG"] = "1"
        argv = [a for a in argv if a != "--debug"]
    return argv


def report_user_errors(prog: str, run: Callable[[], T]) -> T | int:
    """Run ``run()``; a :class:`UserError` (and the OS errors a path mistake raises) becomes one line and an exit
    status instead of a traceback, unless debugging."""
    try:
        return run()
    except (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError) as error:
        if debugging():
            raise
        message = str(error) if isinstance(error, UserError) else _os_error_message(error)
        print(f"{prog}: error: {message}", file=sys.stderr)
        if not isinstance(error, ConfigError):
            print(f"{prog}: (set PANDA_DEBUG=1 or pass --debug for the traceback)", file=sys.stderr)
        return getattr(error, "exit_code", 1)


def _os_error_message(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    return str(error)



def run_command(target, argv: list[str] | None, prog: str, *, show: Callable | None = None, **cli_kwargs) -> int:
    """A command group's ``main``: ``jsonargparse.CLI(target)`` on ``argv`` under :func:`report_user_errors`.

    Args:
        target: The function (or ``{name: function}``) whose signature and docstring are the command line.
        show: Called with the command's return value (e.g. to print what was written).

    Returns:
        0 once the command has run, 1 or 2 on a user error.
    """
    from jsonargparse import CLI

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def run() -> int:
        result = CLI(target, args=argv, prog=prog, **cli_kwargs)
        if show is not None:
            show(result)
        return 0

    return report_user_errors(prog, run)
