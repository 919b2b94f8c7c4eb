"""Paths in data configs may use environment variables (``${DATA}/wudao``), expanded when the data is set up, so
a config parses on a machine where they are not set."""

from __future__ import annotations

import dataclasses
import os
import re

from panda.data.sources import CorpusSource
from panda.errors import ConfigError


def expand_path(path: str, what: str) -> str:
    """Expand ``${VAR}``/``$VAR`` and ``~``; an unset variable is an error naming it and ``what`` uses it."""
    value = os.path.expanduser(os.path.expandvars(path))
    missing = re.findall(r"\$\{?(\w+)", value)
    if missing:
        raise ConfigError(f"{what}: path {path!r} uses environment variable ${missing[0]}, which is not set "
                         f"(export it, e.g. {missing[0]}=/data/panda)")
    return value


def expand_source(source: CorpusSource, key: str) -> CorpusSource:
    if isinstance(source.paths, str):
        return dataclasses.replace(source, paths=expand_path(source.paths, f"{key} {source.name!r}"))
    return dataclasses.replace(source, paths=[expand_path(p, f"{key} {source.name!r}") for p in source.paths])

