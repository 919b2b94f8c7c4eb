"""Evaluation fixtures: small benchmark files in each format and a tiny saved LLaMA with the session tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

C3_ELEMENTS = [
    [["男：你好，今天天气怎么样？", "女：很好，我们去公园吧。"],
     [{"question": "他们要去哪里？", "choice": ["公园", "学校", "商店"], "answer": "公园"},
      {"question": "天气怎么样？", "choice": ["很好", "不好"], "answer": "很好"}], "d1"],
    [["人民日报社论指出，今年经济发展很快。"],
     [{"question": "社论说了什么？", "choice": ["经济发展很慢", "经济发展很快", "没有说", "不知道"],
       "answer": "经济发展很快"}], "d2"],
]

LOGIQA_RECORDS = [
    {"text": "所有的鸟都会飞。企鹅是鸟。", "question": "由此可以推出：",
     "options": ["企鹅会飞", "企鹅不会飞", "有的鸟不会飞", "无法判断"], "answer": 0},
    {"text": "如果下雨，地面就会湿。地面没有湿。", "question": "由此可以推出：",
     "options": ["下雨了", "没有下雨", "地面湿了", "无法判断"], "answer": 1},
    {"text": "甲比乙高，乙比丙高。", "question": "谁最矮？", "options": ["甲", "乙", "丙", "无法判断"], "answer": 2},
]


@pytest.fixture()
def c3_file(tmp_path):
    path = tmp_path / "c3.json"
    path.write_text(json.dumps(C3_ELEMENTS, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture()
def logiqa_file(tmp_path):
    path = tmp_path / "logiqa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in LOGIQA_RECORDS), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_model(tiny_llama_config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config).eval()


@pytest.fixture()
def tiny_model_dir(tmp_path, tiny_model, tokenizer):
    """A tiny LLaMA saved with its tokenizer, in the save_pretrained layout a user would pass."""
    path = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
