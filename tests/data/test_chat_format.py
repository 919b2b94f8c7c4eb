import json

import pytest

from panda.data.chat_format import (
    ChatFormat, ChatFormatError, chat_template, prompt_ids, template_mismatch, training_chat_format,
)
from panda.data.records import Example, Segment
from panda.data.sources import CorpusSource
from panda.data.tokenize import encode_example

SINGLE = [{"role": "user", "content": "请把这句话翻译成英文：我爱北京"}, {"role": "assistant", "content": "I love Beijing."}]
MULTI = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
    {"role": "user", "content": "今天天气怎么样？"}, {"role": "assistant", "content": "晴天，气温二十度。"},
    {"role": "user", "content": "谢谢 Thanks!"}, {"role": "assistant", "content": " 不客气。\n祝你愉快"},
]
FORMATS = [ChatFormat(name, multi_turn) for name in ("reference", "roles")
           for multi_turn in ("conversation", "panda_compat")]


def training_ids(chat_format, messages, tokenizer) -> list[int]:
    segments = chat_format.segments(messages)
    example = Example(tuple(Segment(text, trained) for text, trained in segments))
    return encode_example(example, tokenizer, 4096).sequences[0].input_ids


def test_reference_format_is_the_references_text_join():
    reference = ChatFormat("reference", "panda_compat")
    assert reference.segments(SINGLE) == [("请把这句话翻译成英文：我爱北京", False), (" I love Beijing.", True)]
    assert ChatFormat().segments(MULTI[1:5]) == [
        ("你好", False), (" 你好！有什么可以帮你？", True), ("\n\n今天天气怎么样？", False), (" 晴天，气温二十度。", True)]
    # the reference's flattened history: in0 \n\n tg0 \n\n in1, then " " + tg1
    assert reference.segments(MULTI[1:5]) == [
        ("你好\n\n你好！有什么可以帮你？\n\n今天天气怎么样？", False), (" 晴天，气温二十度。", True)]


@pytest.mark.parametrize("chat_format", FORMATS, ids=lambda f: f"{f.name}-{f.multi_turn}")
@pytest.mark.parametrize("messages", [SINGLE, MULTI[1:5], MULTI], ids=["single", "multi", "system"])
def test_apply_chat_template_renders_the_training_ids(chat_format, messages, tokenizer):
    """The exported template and the data pipeline give the same ids: whole conversations (the training example)
    and every prompt ending in a user turn (what generation feeds)."""
    template = chat_template(chat_format, tokenizer)
    rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False)
    assert list(rendered) == training_ids(chat_format, messages, tokenizer)
    for end in range(1, len(messages) + 1):
        if messages[end - 1]["role"] == "user":
            prompt = messages[:end]
            expected = prompt_ids(chat_format.segments(prompt), tokenizer)
            assert list(tokenizer.apply_chat_template(prompt, chat_template=template, tokenize=True,
                                                      add_generation_prompt=True, return_dict=False)) == expected
            if chat_format.multi_turn == "conversation":  # a prompt is the start of the training sequence
                full = training_ids(chat_format, messages[:end + 1], tokenizer)
                assert full[:len(expected)] == expected
    assert template_mismatch(chat_format, tokenizer, template) is None


def test_prompt_ids_keep_the_dummy_prefix_on_the_first_segment_only(tokenizer):
    ids = prompt_ids(ChatFormat().segments(SINGLE[:1]), tokenizer)
    assert ids == [tokenizer.bos_token_id] + tokenizer("请把这句话翻译成英文：我爱北京", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[1]).startswith("▁")


def test_bad_conversations_and_unknown_formats_are_named():
    with pytest.raises(ChatFormatError, match="chat format 'chatml' is not one of reference, roles"):
        ChatFormat("chatml")
    with pytest.raises(ChatFormatError, match=r"messages\[1\]: expected a 'assistant' message"):
        ChatFormat().segments([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatFormatError, match=r"messages\[0\]: role 'bot' is not one of"):
        ChatFormat().segments([{"role": "bot", "content": "a"}])
    with pytest.raises(ChatFormatError, match=r"messages\[0\] must be an object with a string 'content'"):
        ChatFormat().segments([{"role": "user", "content": 3}])


def test_stored_formats_round_trip():
    stored = ChatFormat("roles", "panda_compat").as_dict()
    assert ChatFormat.from_stored(stored) == ChatFormat("roles", "panda_compat")
    assert ChatFormat.from_stored(json.dumps(stored)) == ChatFormat("roles", "panda_compat")
    assert ChatFormat.from_stored("roles") == ChatFormat("roles") and ChatFormat.from_stored(None) == ChatFormat()


def test_training_mix_has_one_chat_format(tmp_path):
    def source(name, fmt="coig", **kwargs):
        return CorpusSource(name=name, paths=str(tmp_path), format=fmt, **kwargs)

    assert training_chat_format([source("news", "wudao")]) is None
    assert training_chat_format([source("news", "wudao"), source("coig", multi_turn="panda_compat", join=" ")]) == \
        ChatFormat("reference", "panda_compat", " ")
    assert training_chat_format([source("wiki", "wiki2019zh"), source("qa", "baike2018qa")]) == ChatFormat(join="")
    assert training_chat_format([source("qa", "baike2018qa"), source("cf", "coig_counterfactual",
                                                                     multi_turn="panda_compat")]).multi_turn == \
        "panda_compat"  # a templated conversation corpus decides the history layout too
    with pytest.raises(ChatFormatError, match="coig: roles/conversation/join '', flan: reference/conversation/join"):
        training_chat_format([source("coig", chat_format="roles"), source("flan", "flan")])


def test_join_opens_every_reply_and_is_stripped_from_generated_text():
    plain = ChatFormat(join="")
    assert plain.segments(SINGLE) == [("请把这句话翻译成英文：我爱北京", False), ("I love Beijing.", True)]
    assert ChatFormat().reply_text(" 你好") == "你好" and plain.reply_text(" 你好") == " 你好"
