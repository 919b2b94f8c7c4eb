import json

import pytest

from panda.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, check_vocabulary, fill_token_id, load_tokenizer


def test_llama_style_tokenizer(tokenizer, tokenizer_dir):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    ids = tokenizer("你好")["input_ids"]
    assert ids[0] == BOS_ID
    assert tokenizer.convert_ids_to_tokens(ids[1]) == "▁"  # the dummy prefix, as LLaMA's [1, 29871, ...]
    emoji = tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(emoji)[1:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # byte fallback
    assert tokenizer.decode(emoji) == "😀"
    # the same ids as the raw SentencePiece model the directory holds (identity normalisation, BOS prepended)
    import sentencepiece as spm

    raw = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    for text in ("中国2024年", "人民日报社论：迈向充满希望的新世纪", "Hello 世界 😀"):
        assert load_tokenizer(tokenizer_dir)(text)["input_ids"] == [BOS_ID] + raw.encode(text), text


def test_stock_layout_has_no_pad_and_loads_with_eos_as_fill(stock_llama_dir, caplog):
    """Regression (issue 13): a tokenizer directory without a pad token was refused everywhere."""
    config = json.loads((stock_llama_dir / "tokenizer_config.json").read_text())
    assert "pad_token" not in config
    stored = load_tokenizer(stock_llama_dir, fill_pad=False)
    assert stored.pad_token_id is None and len(stored) == 4000
    assert stored.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<0x00>"]  # LLaMA's layout
    emoji = stored("😀", add_special_tokens=False)["input_ids"]
    assert stored.convert_ids_to_tokens(emoji)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert stored("你好")["input_ids"][0] == BOS_ID

    filled = load_tokenizer(stock_llama_dir)
    assert (filled.pad_token_id, filled.pad_token, len(filled)) == (EOS_ID, "</s>", 4000)
    assert fill_token_id(stored) == EOS_ID == fill_token_id(filled)
    assert filled("中国人民")["input_ids"] == stored("中国人民")["input_ids"]


def test_fill_prefers_pad_then_eos_then_unk(tokenizer):
    class Bare:
        pad_token_id = eos_token_id = None
        unk_token_id = UNK_ID

    assert fill_token_id(tokenizer) == PAD_ID
    assert fill_token_id(Bare()) == UNK_ID
    Bare.unk_token_id = None
    with pytest.raises(ValueError, match="no pad, unk or eos token"):
        fill_token_id(Bare(), where="tok/")


def test_one_vocabulary_check(stock_llama_dir, tokenizer):
    stock = load_tokenizer(stock_llama_dir)
    check_vocabulary(4000, stock)
    check_vocabulary(4001, stock)  # a 32001-row Panda model with the stock tokenizer: row 4000 is never used
    with pytest.raises(ValueError, match=r"m/ has 3999 vocabulary rows but t/ has 4000 tokens \(ids up to 3999\)"):
        check_vocabulary(3999, stock, model="m/", tokenizer_name="t/")
    stock.add_special_tokens({"pad_token": "<pad>"})
    with pytest.raises(ValueError, match=r"adds '<pad>' at id 4000 .*panda weights add-pad"):
        check_vocabulary(4000, stock)
