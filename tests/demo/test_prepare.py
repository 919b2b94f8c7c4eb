"""The demo corpora come out in exactly the DESIGN.md formats, deterministically, with held-out text kept apart."""

from __future__ import annotations

import json

import pytest

from panda.eval.prompts import ANSWER_CUE, INSTRUCTION

from panda.demo import corpora
from panda.demo.prepare import (
    CONTINUATION_QUESTION, SENTIMENT_LABELS, SENTIMENT_QUESTION, DemoSizes, RawText, build_demo_corpora,
    group_articles, is_up_to_date, prepare, split_sentences, tagged_sentences, training_texts, write_demo_corpora,
)


def _tagged(text: str) -> list[tuple[str, str]]:
    return [(w, "x") for w in text.split()]


def fake_raw(articles: int = 12) -> RawText:
    """``articles`` articles of a heading, a byline and two three-sentence paragraphs; 40 reviews; 6 dialogues."""
    paragraphs = []
    for a in range(articles):
        paragraphs.append(_tagged(f"第 {a} 号 新闻 标题"))
        paragraphs.append(_tagged(f"记者 张{a}"))
        for p in range(2):
            paragraphs.append(_tagged(
                f"文章 {a} 第 {p} 段 开头 说 了 一些 事情 。 “ 接着 {a} 又 说 了 第二 件 事情 ！ ” "
                f"最后 {a} 段 {p} 问 了 一个 长长 的 问题 吗 ？"))
    reviews = [(f"这是第{i}条{'很好' if i % 2 else '很差'}的评论", bool(i % 2)) for i in range(40)]
    reviews += [reviews[0], ("自相矛盾的评论", True), ("自相矛盾的评论", False)]
    dialogues = [[f"问{i}", f"答{i}", f"再问{i}", f"再答{i}"] for i in range(5)] + [["只有一句"], ["甲", "乙", "丙"]]
    return RawText(paragraphs, reviews, dialogues)


SMALL = DemoSizes(val_articles=2, eval_articles=4, train_reviews=10, val_reviews=4, eval_reviews=6,
                  train_segmentation=8, val_segmentation=3, val_dialogues=2, c3_items=5)


def test_split_sentences_keeps_closing_quotes():
    assert split_sentences("他说：“好。”然后走了。还有吗？没有") == ["他说：“好。”", "然后走了。", "还有吗？", "没有"]


def test_tagged_sentences_split_after_terminal_and_quote():
    words = tagged_sentences(_tagged("他 说 ： “ 好 。 ” 然后 走 了 。 还有 吗 ？ ！ 没有"))
    assert words == [["他", "说", "：", "“", "好", "。", "”"], ["然后", "走", "了", "。"], ["还有", "吗", "？", "！"],
                     ["没有"]]


def test_group_articles_uses_heading_lines_as_title():
    paragraphs = ["开头没有标题的正文。", "标题一", "副标题", "正文一。", "正文二。", "标题二", "正文三。", "结尾标题"]
    articles = group_articles(paragraphs)
    assert [(a.title_lines, a.body) for a in articles] == [([], [0]), (["标题一", "副标题"], [3, 4]), (["标题二"], [6])]


def _read(path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def test_files_have_the_design_formats(tmp_path):
    files, counts = build_demo_corpora(fake_raw(), SMALL, seed=0)
    write_demo_corpora(files, tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json*")) == sorted(files)

    for split in ("train", "val"):
        news = _read(tmp_path / split / "news.json")
        assert news and all(set(r) == {"title", "content"} and r["title"].startswith("第") for r in news)
        assert all(isinstance(r["content"], str) and r["content"] for r in news)

        sentiment = _read(tmp_path / split / "sentiment.jsonl")
        assert all(set(r) == {"instruction", "input", "output"} and r["output"] in SENTIMENT_LABELS
                   for r in sentiment)
        segmentation = _read(tmp_path / split / "segmentation.jsonl")
        assert all(set(r) == {"instruction", "input", "output"} and r["output"].replace(" ", "") == r["input"]
                   for r in segmentation)
        for r in sentiment + segmentation:
            assert isinstance(r["instruction"], str) or (
                isinstance(r["instruction"], list) and all(isinstance(i, str) for i in r["instruction"]))

        dialogues = _read(tmp_path / split / "dialogues.json")
        assert dialogues and all(isinstance(d, list) and d for d in dialogues)
        assert all(set(turn) == {"inputs", "targets"} for d in dialogues for turn in d)

        choice = _read(tmp_path / split / "multiple_choice.jsonl")
        assert choice and all(set(r) == {"instruction", "input", "output"} and r["input"] == "" for r in choice)
        assert all(r["instruction"].startswith(INSTRUCTION) and r["instruction"].endswith(ANSWER_CUE)
                   and f": {r['output']}\n" in r["instruction"] for r in choice)

    train_instructions = _read(tmp_path / "train/sentiment.jsonl") + _read(tmp_path / "train/segmentation.jsonl")
    assert any(isinstance(r["instruction"], list) for r in train_instructions)
    assert any(isinstance(r["instruction"], str) for r in train_instructions)
    assert [len(d) for d in _read(tmp_path / "train/dialogues.json")].count(2) >= 1

    c3 = _read(tmp_path / "eval/c3_continuation.json")
    assert len(c3) == counts["eval/c3_continuation.json"] > 0
    for i, item in enumerate(c3):
        lines, questions, item_id = item
        assert len(item) == 3 and item_id == f"demo-c3-{i}"
        assert isinstance(lines, list) and len(lines) >= 2 and all(isinstance(line, str) for line in lines)
        (question,) = questions
        assert set(question) == {"question", "choice", "answer"} and question["question"] == CONTINUATION_QUESTION
        assert len(set(question["choice"])) == 4 and question["choice"].count(question["answer"]) == 1

    logiqa = _read(tmp_path / "eval/logiqa_sentiment.jsonl")
    assert len(logiqa) == SMALL.eval_reviews
    assert all(set(r) == {"text", "question", "options", "answer"} and r["question"] == SENTIMENT_QUESTION
               and r["options"] == list(SENTIMENT_LABELS) and type(r["answer"]) is int for r in logiqa)
    assert sorted(r["answer"] for r in logiqa) == [0, 0, 0, 1, 1, 1]  # balanced: chance is exactly 50 %
    assert all(("很好" in r["text"]) == (r["answer"] == 0) for r in logiqa)


def test_counts_report_what_was_left_out():
    _, counts = build_demo_corpora(fake_raw(), SMALL, seed=0)
    assert counts["reviews_unique"] == 41 and counts["reviews_conflicting_labels"] == 1
    assert counts["dialogue_utterances_without_reply"] == 2  # "只有一句" and the trailing "丙"
    assert counts["train/dialogues.json"] + counts["val/dialogues.json"] == 6


def test_deterministic_and_seeded(tmp_path):
    first, _ = build_demo_corpora(fake_raw(), SMALL, seed=0)
    again, _ = build_demo_corpora(fake_raw(), SMALL, seed=0)
    other, _ = build_demo_corpora(fake_raw(), SMALL, seed=1)
    assert write_demo_corpora(first, tmp_path / "a") == write_demo_corpora(again, tmp_path / "b")
    assert first != other


def _disjointness(files):
    """Held-out paragraphs, sentences, reviews and dialogues never occur as such in a training file."""
    train_paragraphs = {p for a in files["train/news.json"] for p in a["content"].split("\n")}
    train_sentences = {s for p in train_paragraphs for s in split_sentences(p)}
    for article in files["val/news.json"]:
        assert not set(article["content"].split("\n")) & train_paragraphs
    for lines, (question,), _ in files["eval/c3_continuation.json"]:
        assert not set(lines + question["choice"]) & train_sentences
        assert "".join(lines) + question["answer"] not in "\n".join(training_texts(files))
    val_reviews = {r["input"] for r in files["val/sentiment.jsonl"]}
    train_reviews = {r["input"] for r in files["train/sentiment.jsonl"]}
    eval_reviews = {r["text"] for r in files["eval/logiqa_sentiment.jsonl"]}
    assert not (val_reviews & train_reviews) and not (eval_reviews & train_reviews) and not (eval_reviews & val_reviews)
    assert not {r["input"] for r in files["val/segmentation.jsonl"]} & {r["input"] for r in
                                                                        files["train/segmentation.jsonl"]}
    assert not {r["instruction"] for r in files["val/multiple_choice.jsonl"]} & {
        r["instruction"] for r in files["train/multiple_choice.jsonl"]}
    for record in files["val/multiple_choice.jsonl"] + files["train/multiple_choice.jsonl"]:
        for text in eval_reviews | {s for lines, _, _ in files["eval/c3_continuation.json"] for s in lines}:
            assert text not in record["instruction"]
    val_dialogues = {json.dumps(d, ensure_ascii=False) for d in files["val/dialogues.json"]}
    assert not val_dialogues & {json.dumps(d, ensure_ascii=False) for d in files["train/dialogues.json"]}


def test_held_out_sets_are_disjoint_from_training_text_fake():
    _disjointness(build_demo_corpora(fake_raw(), SMALL, seed=0)[0])


@pytest.fixture(scope="module")
def real_raw() -> RawText:
    """A slice of the real installed text: 3,000 paragraphs, 3,000 reviews, every dialogue."""
    reviews = corpora.sentiment_reviews()
    return RawText(corpora.tagged_paragraphs()[:3000], reviews[:1500] + reviews[-1500:],
                   corpora.chatterbot_dialogues())


def test_held_out_sets_are_disjoint_from_training_text_real(real_raw):
    sizes = DemoSizes(val_articles=20, eval_articles=40, train_reviews=1000, val_reviews=100, eval_reviews=100,
                      train_segmentation=500, val_segmentation=50, c3_items=60)
    files, counts = build_demo_corpora(real_raw, sizes, seed=0)
    assert counts["eval/c3_continuation.json"] == 60 and counts["eval/logiqa_sentiment.jsonl"] == 100
    _disjointness(files)


def test_installed_corpora_are_readable():
    dialogues = corpora.chatterbot_dialogues()
    assert len(dialogues) == 467 and all(isinstance(u, str) and u for d in dialogues for u in d)
    reviews = corpora.sentiment_reviews()
    assert len(reviews) > 30000 and {label for _, label in reviews} == {True, False}


def test_prepare_writes_tokenizer_and_manifest(tmp_path, real_raw):
    from panda.data.tokenizer import load_tokenizer

    sizes = DemoSizes(val_articles=10, eval_articles=20, train_reviews=300, val_reviews=20, eval_reviews=20,
                      train_segmentation=100, val_segmentation=10, c3_items=10)
    small = RawText(real_raw.tagged_paragraphs[:800], real_raw.reviews, real_raw.dialogues)
    manifest = prepare(tmp_path, sizes, seed=0, vocab_size=4000, raw=small)
    saved = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert saved == manifest and set(saved["files"]) == {
        f"{split}/{name}" for split in ("train", "val")
        for name in ("news.json", "sentiment.jsonl", "segmentation.jsonl", "dialogues.json", "multiple_choice.jsonl")
    } | {"eval/c3_continuation.json", "eval/logiqa_sentiment.jsonl"}
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    assert len(tokenizer) == 4000 and tokenizer("人民")["input_ids"][0] == tokenizer.bos_token_id
    assert not is_up_to_date(tmp_path, sizes, vocab_size=4000)  # settings of a custom input are not recorded
    again = prepare(tmp_path / "again", sizes, seed=0, vocab_size=4000, raw=small)
    assert again["files"] == manifest["files"]
    model = "tokenizer/tokenizer.model"
    assert (tmp_path / "again" / model).read_bytes() == (tmp_path / model).read_bytes()


DEMO_FORMATS = {"news.json": "wudao", "sentiment.jsonl": "jsonl", "segmentation.jsonl": "jsonl",
                "dialogues.json": "coig", "multiple_choice.jsonl": "jsonl"}


def test_training_files_read_cleanly_with_the_corpus_readers(tmp_path):
    sources = pytest.importorskip("panda.data.sources")
    files, _ = build_demo_corpora(fake_raw(), SMALL, seed=0)
    write_demo_corpora(files, tmp_path)
    for split in ("train", "val"):
        for name, fmt in DEMO_FORMATS.items():
            source = sources.CorpusSource(name=name, paths=str(tmp_path / split / name), format=fmt, strict=True)
            examples = list(source.read())
            assert len(examples) == len(files[f"{split}/{name}"])
            trained = [[s.trained for s in e.segments] for e in examples]
            if fmt == "wudao":
                assert all(t == [True] for t in trained)
            else:
                assert all(t[0] is False and t[-1] is True for t in trained)
