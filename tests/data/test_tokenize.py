import pytest

from panda.constants import IGNORE_INDEX as X
from panda.data.records import Example, Segment
from panda.data.tokenize import EncodingStats, encode_example, encode_examples, encode_segments

BOS, EOS, DUMMY = 1, 2, "▁"


def alone(tokenizer, text):
    """Ids of ``text`` encoded on its own (no BOS): starts with the dummy-prefix piece."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def continuation(tokenizer, text):
    """Ids of ``text`` as it continues a document: its own encoding minus the lone dummy-prefix piece."""
    ids = alone(tokenizer, text)
    assert tokenizer.convert_ids_to_tokens(ids[0]) == DUMMY, "pick texts whose first piece is the lone '▁'"
    return ids[1:]


TURNS = [("你好，今天天气怎么样？", False), ("今天是晴天。", True), ("明天呢？", False), ("明天下雨。", True)]


def example(*segments):
    return Example(tuple(Segment(text, trained) for text, trained in segments), source="test", origin="t.jsonl:7")


def test_plain_text_full_loss(tokenizer):
    text = "中国人民迎来了新的一年。"
    [seq] = encode_example(example((text, True)), tokenizer, 64)
    ids = tokenizer(text)["input_ids"]  # [BOS, "▁", ...]
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<s>", DUMMY]
    assert seq.input_ids == ids + [EOS]
    assert seq.labels == [X] + ids[1:] + [EOS]


def test_single_turn_instruction_masks_prompt_exactly(tokenizer):
    prompt, response = "请问中国的首都是哪里？", "北京。"
    [seq] = encode_example(example((prompt, False), (response, True)), tokenizer, 64)
    prompt_ids = alone(tokenizer, prompt)
    response_ids = continuation(tokenizer, response)
    assert seq.input_ids == [BOS] + prompt_ids + response_ids + [EOS]
    assert seq.labels == [X] * (1 + len(prompt_ids)) + response_ids + [EOS]
    # the ids are those of the concatenated text: no spurious "▁" where the response starts
    assert seq.input_ids[:-1] == tokenizer(prompt + response)["input_ids"]
    assert tokenizer.decode([t for t in seq.labels if t not in (X, EOS)]) == response


def test_dummy_prefix_merged_into_first_piece_is_not_kept(tokenizer):
    # "▁新华社" is one piece of the test tokenizer: dropping a lone "▁" would not be enough here
    prompt, response = "消息来源：", "新华社北京电"
    assert tokenizer.convert_ids_to_tokens(alone(tokenizer, response))[0].startswith(DUMMY + "新")
    [seq] = encode_example(example((prompt, False), (response, True)), tokenizer, 64)
    assert seq.input_ids[:-1] == tokenizer(prompt + response)["input_ids"]
    trained = [t for t in seq.labels if t not in (X, EOS)]
    assert not tokenizer.convert_ids_to_tokens(trained)[0].startswith(DUMMY)
    assert tokenizer.decode(trained) == response


def test_multi_turn_conversation_trains_every_assistant_turn(tokenizer):
    [seq] = encode_example(example(*TURNS), tokenizer, 128)
    user1 = alone(tokenizer, TURNS[0][0])
    bot1, user2, bot2 = (continuation(tokenizer, text) for text, _ in TURNS[1:])
    assert seq.input_ids == [BOS] + user1 + bot1 + [EOS] + user2 + bot2 + [EOS]
    assert seq.labels == ([X] * (1 + len(user1)) + bot1 + [EOS] + [X] * len(user2) + bot2 + [EOS])
    without_eos = [t for i, t in enumerate(seq.input_ids) if t != EOS]
    assert without_eos == tokenizer("".join(text for text, _ in TURNS))["input_ids"]


def test_byte_fallback_emoji_at_segment_boundary(tokenizer):
    prompt, response = "今天心情😀", "😀很好"
    [seq] = encode_example(example((prompt, False), (response, True)), tokenizer, 64)
    emoji_bytes = ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    prompt_ids = alone(tokenizer, prompt)
    assert tokenizer.convert_ids_to_tokens(prompt_ids)[-4:] == emoji_bytes
    response_ids = seq.input_ids[1 + len(prompt_ids):-1]
    assert tokenizer.convert_ids_to_tokens(response_ids)[:4] == emoji_bytes  # no "▁" between the two emoji
    assert seq.labels == [X] * (1 + len(prompt_ids)) + response_ids + [EOS]
    assert tokenizer.decode(response_ids) == response
    assert seq.input_ids[:-1] == tokenizer(prompt + response)["input_ids"]


def test_empty_first_segment_moves_the_dummy_prefix(tokenizer):
    ids = encode_segments(["", "你好", "你好"], tokenizer)
    assert ids == [[], alone(tokenizer, "你好"), continuation(tokenizer, "你好")]


def test_special_token_spelled_in_text_stays_text(tokenizer):
    [seq] = encode_example(example(("写</s>和<s>", False), ("好</s>", True)), tokenizer, 64)
    assert seq.input_ids.count(EOS) == 1 and seq.input_ids.count(BOS) == 1 and seq.input_ids[-1] == EOS
    assert tokenizer.decode(seq.input_ids[1:-1]) == "写</s>和<s>好</s>"


def test_batched_encoding_equals_one_by_one(tokenizer, chinese_paragraphs):
    examples = [example((text[:40], False), (text[40:80], True)) if i % 2 else example((text, True))
                for i, text in enumerate(chinese_paragraphs[:50])]
    assert encode_examples(examples, tokenizer, 64) == [encode_example(ex, tokenizer, 64) for ex in examples]


def test_long_plain_text_is_chunked_with_bos_each(tokenizer, chinese_paragraphs):
    text = chinese_paragraphs[0]
    body = tokenizer(text)["input_ids"][1:] + [EOS]
    encoded = encode_example(example((text, True)), tokenizer, 8)
    assert encoded.chunks == -(-len(body) // 7) > 2 and not encoded.truncated
    for seq in encoded:
        assert len(seq.input_ids) <= 8 and seq.input_ids[0] == BOS and seq.labels[0] == X
        assert seq.labels[1:] == seq.input_ids[1:]
    assert [t for seq in encoded for t in seq.input_ids[1:]] == body


def test_long_instruction_trims_prompt_start_keeps_response(tokenizer):
    prompt, response = "迈向充满希望的新世纪，中国人民迎来了新的一年。", "好的。"
    prompt_ids, response_ids = alone(tokenizer, prompt), continuation(tokenizer, response)
    assert len(prompt_ids) > 8
    size = 1 + 5 + len(response_ids) + 1
    encoded = encode_example(example((prompt, False), (response, True)), tokenizer, size)
    [seq] = encoded
    assert encoded.truncated and not encoded.dropped
    assert seq.input_ids == [BOS] + prompt_ids[-5:] + response_ids + [EOS]
    assert seq.labels == [X] * 6 + response_ids + [EOS]
    fits = encode_example(example((prompt, False), (response, True)), tokenizer, len(prompt_ids) + size - 5)
    assert not fits.truncated and len(fits.sequences[0].input_ids) == len(prompt_ids) + size - 5


def test_long_instruction_dropped_when_asked(tokenizer):
    encoded = encode_example(example(("迈向充满希望的新世纪", False), ("好的。", True)), tokenizer, 4,
                             truncation="drop")
    assert encoded.sequences == () and encoded.dropped and encoded.chunks == 0


def test_response_longer_than_window_keeps_half_window_of_prompt(tokenizer):
    prompt, response = "请总结：", "迈向充满希望的新世纪，中国人民迎来了新的一年。"
    prompt_ids, response_ids = alone(tokenizer, prompt), continuation(tokenizer, response)
    assert len(prompt_ids) >= 3 and len(response_ids) > 10
    encoded = encode_example(example((prompt, False), (response, True)), tokenizer, 8)
    [seq] = encoded
    assert encoded.truncated
    assert seq.input_ids == [BOS] + prompt_ids[-3:] + response_ids[:4]  # 7 // 2 = 3 context tokens, no EOS
    assert seq.labels == [X] * 4 + response_ids[:4]


def test_long_conversation_loses_its_first_turns(tokenizer):
    [full] = encode_example(example(*TURNS), tokenizer, 128)
    size = 10 + len(continuation(tokenizer, TURNS[2][0])) + len(continuation(tokenizer, TURNS[3][0])) + 1
    encoded = encode_example(example(*TURNS), tokenizer, size)
    [seq] = encoded
    assert encoded.truncated
    assert seq.input_ids == [BOS] + full.input_ids[-(size - 1):]
    assert seq.labels == [X] + full.labels[-(size - 1):]


def test_example_without_trained_segment_names_its_origin(tokenizer):
    with pytest.raises(ValueError, match=r"t\.jsonl:7"):
        encode_example(example(("只有问题", False)), tokenizer, 16)


def test_encoding_stats_count_chunks_truncations_drops(tokenizer):
    stats = EncodingStats()
    stats.add(encode_example(example(("迈向充满希望的新世纪", True)), tokenizer, 4))
    stats.add(encode_example(example(("迈向充满希望的新世纪", False), ("好的。", True)), tokenizer, 4))
    stats.add(encode_example(example(("迈向充满希望的新世纪", False), ("好的。", True)), tokenizer, 4,
                             truncation="drop"))
    body = len(alone(tokenizer, "迈向充满希望的新世纪")) + 1  # + EOS
    chunks = -(-body // 3)
    response = len(continuation(tokenizer, "好的。")) + 1
    assert response == 3  # the truncated example is BOS, nothing of the prompt, the response and EOS
    assert stats.as_dict() == {"examples": 3, "sequences": chunks + 1, "tokens": body + chunks + 4,
                               "loss_tokens": body + response, "chunked": 1, "truncated": 1, "dropped": 1}
