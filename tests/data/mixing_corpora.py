"""Small real-text corpora in the reference formats, shared by the mixture, cache, data-module and tool tests."""

from __future__ import annotations

import json
from pathlib import Path

from panda.data.sources import CorpusSource


def write_corpora(root: Path, paragraphs: list[str], *, news: int = 240, coig: int = 60) -> dict[str, CorpusSource]:
    """Write a WuDao-format news file and a COIG file (single-turn + multi-turn) under ``root``.

    Returns the two sources, named ``news`` (full loss) and ``coig`` (prompts masked).
    """
    root.mkdir(parents=True, exist_ok=True)
    text = [p for p in paragraphs if len(p) >= 40]
    news_records = [{"title": p[:8], "content": p} for p in text[:news]]
    coig_records: list = []
    for k, p in enumerate(text[news:news + coig]):
        if k % 4 == 3:
            coig_records.append([{"inputs": "请复述：" + p[:12], "targets": p[:12]},
                                 {"inputs": "再续写一句。", "targets": p[12:40]}])
        else:
            coig_records.append({"inputs": "给下面的段落写一个开头：" + p[20:60], "targets": p[:20]})
    (root / "news.json").write_text(json.dumps(news_records, ensure_ascii=False), encoding="utf-8")
    (root / "coig.json").write_text(json.dumps(coig_records, ensure_ascii=False), encoding="utf-8")
    return {"news": CorpusSource("news", str(root / "news.json"), "wudao"),
            "coig": CorpusSource("coig", str(root / "coig.json"), "coig")}
