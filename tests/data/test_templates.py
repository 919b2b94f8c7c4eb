"""Field templates: every public corpus layout read in place, exact segments; bad records and bad templates named."""

from __future__ import annotations

import json

import pytest

from panda.data.report import BadRecordError, ReadReport
from panda.data.sources import CorpusSource
from panda.data.templates import TEMPLATES, FieldTemplate, TemplateError


def lines(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def segments(source: CorpusSource) -> list[list[tuple[str, bool]]]:
    return [[(s.text, s.trained) for s in e.segments] for e in source.read()]


def test_nlp_chinese_corpus_layouts(tmp_path):
    wiki = tmp_path / "wiki_zh" / "AA"
    wiki.mkdir(parents=True)
    lines(wiki / "wiki_00", [{"id": "1", "url": "u", "title": "数学", "text": "数学\n\n数学是科学。"}])
    (wiki / "README.md").write_text("not a record")  # a directory picks up wiki_* files only
    assert segments(CorpusSource("wiki", str(tmp_path / "wiki_zh"), "wiki2019zh")) == [[("数学\n\n数学是科学。", True)]]

    news = lines(tmp_path / "news.json", [{"news_id": "n", "keywords": "k", "desc": "d", "title": "标题",
                                           "source": "s", "time": "t", "content": "正文。"}])
    assert segments(CorpusSource("news", news, "news2016zh")) == [[("标题\n正文。", True)]]

    baike = lines(tmp_path / "baike.json", [
        {"qid": "q", "category": "c", "title": "问题？", "desc": "补充", "answer": "回答。"},
        {"qid": "q", "category": "c", "title": "问题？", "desc": "", "answer": "回答。"}])
    assert segments(CorpusSource("baike", baike, "baike2018qa")) == [
        [("问题？\n补充", False), ("回答。", True)], [("问题？", False), ("回答。", True)]]

    web = lines(tmp_path / "web.json", [{"qid": 1, "title": "题", "desc": None, "topic": "t", "star": 3,
                                         "content": "答。", "answer_id": 2, "answerer_tags": ""}])
    assert segments(CorpusSource("web", web, "webtext2019zh", join=" ")) == [[("题", False), (" 答。", True)]]

    translation = lines(tmp_path / "tr.json", [{"english": "Hello.", "chinese": "你好。"}])
    assert segments(CorpusSource("tr", translation, "translation2019zh")) == [
        [("翻译成中文：\nHello.", False), ("你好。", True)]]
    assert segments(CorpusSource("tr", translation, "translation2019zh", loss="full")) == [
        [("翻译成中文：\nHello.你好。", True)]]


def test_coig_released_files(tmp_path):
    translated = lines(tmp_path / "translated_instructions.jsonl", [
        {"instruction": "Hi", "input": "", "output": "o", "trans_instruction": "指令", "trans_input": "输入",
         "trans_output": "输出"}])
    assert segments(CorpusSource("t", translated, "coig_translated")) == [[("指令\n\n输入", False), ("输出", True)]]
    exam = lines(tmp_path / "exam_instructions.jsonl", [
        {"textbox_q_instruction": "阅读", "textbox_q_context": "", "textbox_question": "问？",
         "textbox_answer": "A", "textbox_answer_analysis": "因为"}])
    assert segments(CorpusSource("e", exam, "coig_exam")) == [[("阅读\n\n问？", False), ("A\n\n因为", True)]]
    part1 = tmp_path / "human_value_alignment_instructions_part1.json"
    part1.write_text(json.dumps([{"instruction": "怎么办？", "input": "", "output": "这样。"}], ensure_ascii=False))
    assert segments(CorpusSource("h", str(part1), "coig_instruction")) == [[("怎么办？", False), ("这样。", True)]]

    chats = tmp_path / "counterfactural_correction_multi_round_chat"
    chats.mkdir()
    (chats / "a.json").write_text(json.dumps({
        "round_2": {"prompt": "p2", "response": "r2"}, "round_10": {"prompt": "p10", "response": "r10"},
        "round_1": {"prompt": "p1", "response": "r1"}, "other": 1}, indent=2))  # one object over many lines
    assert segments(CorpusSource("c", str(chats), "coig_counterfactual")) == [
        [("p1", False), ("r1", True), ("\n\np2", False), ("r2", True), ("\n\np10", False), ("r10", True)]]
    # the reference's flattening, one example per turn, with its " " join
    assert segments(CorpusSource("c", str(chats), "coig_counterfactual", multi_turn="panda_compat", join=" ")) == [
        [("\n\np1", False), (" r1", True)], [("p1\n\nr1\n\np2", False), (" r2", True)],
        [("p1\n\nr1\n\np2\n\nr2\n\np10", False), (" r10", True)]]


def test_bad_record_names_file_line_and_field(tmp_path):
    path = lines(tmp_path / "baike.json", [
        {"qid": 1, "title": "题", "desc": "", "answer": "答"},
        {"qid": 2, "title": "题", "desc": ""},
        {"qid": 3, "title": ["题"], "desc": "", "answer": "答"},
        {"qid": 4, "title": "题", "desc": "", "answer": "  "}])
    report = ReadReport()
    assert len(list(CorpusSource("baike", path, "baike2018qa").read(report))) == 1
    problems = [str(p) for p in report.problems]
    assert f"{path}:2" in problems[0] and "missing field 'answer'" in problems[0]
    assert f"{path}:3" in problems[1] and "field 'title' must be a string, got an array" in problems[1]
    assert f"{path}:4" in problems[2] and "empty response: field 'answer' is empty" in problems[2]
    with pytest.raises(BadRecordError, match="missing field 'answer'"):
        list(CorpusSource("baike", path, "baike2018qa", strict=True).read())


def test_template_field_that_never_occurs_stops_at_start(tmp_path):
    path = lines(tmp_path / "news.json", [{"title": "t", "body": "b"}] * 3)
    with pytest.raises(ValueError, match="source 'news' .*names field 'content', which occurs in none of the first "
                                         "3 records"):
        next(CorpusSource("news", path, "news2016zh").read())
    custom = {"prompt": ["{title}"], "response": ["{body}"]}
    assert segments(CorpusSource("news", path, "template", template=custom))[0] == [("t", False), ("b", True)]
    with pytest.raises(ValueError, match="source 'x': template keys \\['promt'\\] are unknown"):
        CorpusSource("x", path, "template", template={"promt": ["{a}"], "response": ["{b}"]})
    with pytest.raises(ValueError, match="`template:` goes with `format: template`"):
        CorpusSource("x", path, "news2016zh", template=custom)


def test_max_records_reads_the_head_like_the_reference_flan_sampler(tmp_path):
    path = lines(tmp_path / "flan.jsonl", [{"inputs": f"q{i}", "targets": f"a{i}"} for i in range(5)])
    assert [e.segments[0].text for e in CorpusSource("f", path, "flan", max_records=2).read()] == ["q0", "q1"]


def test_every_named_template_renders():
    for name, template in TEMPLATES.items():
        record = {field: f"<{field}>" for field in template.fields}
        if template.turns:
            record = {f"{template.turns}1": record}
        assert template.render(record), name
    with pytest.raises(TemplateError):
        FieldTemplate(text=("{a}",)).render({"b": "x"})


def test_reference_join_masks_exactly_the_prompt_with_a_stock_tokenizer(tmp_path, stock_llama_dir):
    """baike2018qa with the reference's " " join through a pad-less LLaMA-style tokenizer: the ids are BOS, the
    prompt's own encoding, the response encoded with its leading space (no dummy prefix), EOS; only the response
    and its EOS carry labels."""
    from panda.constants import IGNORE_INDEX
    from panda.data.tokenize import encode_example
    from panda.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(stock_llama_dir)
    path = lines(tmp_path / "baike.json", [{"qid": 1, "category": "c", "title": "中国人民", "desc": "",
                                            "answer": "新年好"}])
    (example,) = CorpusSource("baike", path, "baike2018qa", join=" ").read()
    (sequence,) = encode_example(example, tokenizer, 64)
    prompt = tokenizer("中国人民", add_special_tokens=False)["input_ids"]
    response = tokenizer("a 新年好", add_special_tokens=False)["input_ids"]
    response = response[len(tokenizer("a", add_special_tokens=False)["input_ids"]):]  # " 新年好" inside running text
    assert sequence.input_ids == [1, *prompt, *response, 2]
    assert sequence.labels == [IGNORE_INDEX] * (1 + len(prompt)) + [*response, 2]
    assert tokenizer.convert_ids_to_tokens(response)[0].startswith("▁")  # the join's space, merged as in running text
