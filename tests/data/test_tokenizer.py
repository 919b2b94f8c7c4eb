from panda.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer


def test_llama_style_tokenizer(tokenizer, tokenizer_dir):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    ids = tokenizer("你好")["input_ids"]
    assert ids[0] == BOS_ID
    assert tokenizer.convert_ids_to_tokens(ids[1]) == "▁"  # the dummy prefix, as LLaMA's [1, 29871, ...]
    emoji = tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(emoji)[1:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # byte fallback
    assert tokenizer.decode(emoji) == "😀"
    assert load_tokenizer(tokenizer_dir)("中国2024年")["input_ids"] == ids[:0] + tokenizer("中国2024年")["input_ids"]
