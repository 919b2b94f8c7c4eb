import pytest
import sentencepiece as spm
import torch

from panda.data.tokenizer import load_tokenizer, save_tokenizer_dir, train_sentencepiece
from panda.demo.corpora import people_daily_paragraphs
from panda.weights.vocab import (
    WORD_BOUNDARY, extend_vocabulary, initialise_new_rows, merge_sentencepiece, old_piece_ids, tokens_per_character,
)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    """Paragraphs the session tokenizer never saw: 8,000 to learn pieces from, the file's last 100 held out."""
    paragraphs = people_daily_paragraphs()
    return paragraphs[3000:11000], paragraphs[-100:]


@pytest.fixture(scope="module")
def merged(tokenizer_dir, corpus, tmp_path_factory):
    base = (tokenizer_dir / "tokenizer.model").read_bytes()
    model, new_pieces = merge_sentencepiece(base, train_sentencepiece(corpus[0], vocab_size=8000))
    directory = save_tokenizer_dir(model, tmp_path_factory.mktemp("merged_tokenizer"))
    return base, model, new_pieces, directory


def test_merged_tokenizer_keeps_every_old_id_and_encodes_chinese_in_fewer_tokens(merged, tokenizer, corpus):
    base, model, new_pieces, directory = merged
    old, new = spm.SentencePieceProcessor(model_proto=base), spm.SentencePieceProcessor(model_proto=model)
    assert new.get_piece_size() == old.get_piece_size() + len(new_pieces) and len(new_pieces) > 1000
    for i in range(old.get_piece_size()):
        assert (new.id_to_piece(i), new.get_score(i), new.is_byte(i), new.is_control(i)) == \
               (old.id_to_piece(i), old.get_score(i), old.is_byte(i), old.is_control(i)), i
    new_tokenizer = load_tokenizer(directory)
    assert new_tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == \
        tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert (new_tokenizer.bos_token_id, new_tokenizer.eos_token_id, new_tokenizer.pad_token_id) == (1, 2, 3)

    held_out = corpus[1]
    before, after = tokens_per_character(tokenizer, held_out), tokens_per_character(new_tokenizer, held_out)
    assert after < 0.9 * before  # the 4k base already knows Chinese; LLaMA's byte-spelt Chinese gains ~2x
    for text in held_out[:20]:  # the Hugging Face tokenizer agrees with SentencePiece on the merged model
        assert new_tokenizer(text, add_special_tokens=False)["input_ids"] == new.encode(text)
        assert new_tokenizer.decode(new_tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_new_rows_are_the_mean_of_the_old_pieces_rows(merged, tokenizer, tiny_llama_config):
    from transformers import LlamaForCausalLM

    base, _, new_pieces, directory = merged
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config)
    old_embed = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    old_size = len(tokenizer)

    initialise_new_rows(model, base, new_pieces, old_size)

    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape[0] == head.shape[0] == len(load_tokenizer(directory))
    assert torch.equal(embed[:old_size], old_embed) and torch.equal(head[:old_size], old_head)
    checked = 0
    for offset, piece in list(enumerate(new_pieces))[::4]:
        if piece.startswith(WORD_BOUNDARY):  # the old HF tokenizer's dummy prefix spells "▁X" from "X"
            ids = tokenizer(piece[1:], add_special_tokens=False)["input_ids"]
        else:
            ids = old_piece_ids(base, [piece])[0]
            assert tokenizer.decode(ids) == piece  # the spelling concatenates back to the piece
        assert len(ids) >= 1
        torch.testing.assert_close(embed[old_size + offset], old_embed[ids].mean(0), rtol=0, atol=1e-7)
        torch.testing.assert_close(head[old_size + offset], old_head[ids].mean(0), rtol=0, atol=1e-7)
        checked += 1
    assert checked > 1000
    assert any(len(ids) > 1 for ids in old_piece_ids(base, new_pieces))


def test_extend_vocabulary_end_to_end_then_embedding_only_training(tmp_path, tokenizer_dir, tiny_llama_config,
                                                                   corpus, capsys):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from panda.model import PandaLM

    LlamaForCausalLM(tiny_llama_config).save_pretrained(tmp_path / "base")
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(corpus[0][:3000] + corpus[1]), encoding="utf-8")

    result = extend_vocabulary(str(tmp_path / "base"), [str(corpus_file)], str(tmp_path / "extended"),
                               tokenizer=str(tokenizer_dir), vocab_size=6000, held_out_lines=100)

    assert result.tokens_per_char_after < result.tokens_per_char_before
    assert "tokens per character" in capsys.readouterr().out
    extended = AutoModelForCausalLM.from_pretrained(tmp_path / "extended")
    rows = extended.get_input_embeddings().weight.shape[0]
    assert rows == result.new_size == len(load_tokenizer(tmp_path / "extended"))

    module = PandaLM(pretrained=str(tmp_path / "extended"), trainable="embeddings", monitor_throughput=False)
    trainable = sorted(name for name, p in module.named_parameters() if p.requires_grad)
    assert trainable == ["model.lm_head.weight", "model.model.embed_tokens.weight"]


def test_add_pad_reproduces_the_reference_vocabulary(stock_llama_dir, tmp_path):
    """`panda weights add-pad`: <pad> at the next id, embed_tokens/lm_head one row longer, new row = mean of old."""
    from transformers import AutoModelForCausalLM

    from panda.weights.__main__ import main
    from panda.weights.vocab import add_pad_token

    assert main(["add-pad", str(stock_llama_dir), str(tmp_path / "pad")]) == 0
    old = AutoModelForCausalLM.from_pretrained(stock_llama_dir)
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "pad")
    tokenizer = load_tokenizer(tmp_path / "pad", fill_pad=False)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer)) == ("<pad>", 4000, 4001)
    assert new.config.pad_token_id == 4000 and new.config.vocab_size == 4001
    for get in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(old, get)().weight, getattr(new, get)().weight
        assert after.shape == (4001, before.shape[1])
        torch.testing.assert_close(after[:4000], before, rtol=0, atol=0)
        torch.testing.assert_close(after[4000], before.mean(0), rtol=0, atol=1e-7)
    assert tokenizer("中国人民")["input_ids"] == load_tokenizer(stock_llama_dir)("中国人民")["input_ids"]
    with pytest.raises(ValueError, match="already has a pad token '<pad>' \\(id 4000\\)"):
        add_pad_token(str(tmp_path / "pad"), str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()


def test_deltas_work_for_both_vocabulary_sizes(stock_llama_dir, tmp_path):
    """A 32001-style model (add-pad) released as a delta against the stock 32000-style base, and rebuilt bit for bit;
    the same for a delta between two stock-size models."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from panda.weights.delta import apply_delta, make_delta
    from panda.weights.vocab import add_pad_token

    add_pad_token(str(stock_llama_dir), str(tmp_path / "pad"))
    trained = AutoModelForCausalLM.from_pretrained(stock_llama_dir)
    with torch.no_grad():
        trained.model.layers[0].mlp.up_proj.weight.add_(0.5)
    trained.save_pretrained(tmp_path / "stock-trained")
    for target in ("pad", "stock-trained"):
        make_delta(stock_llama_dir, tmp_path / target, tmp_path / f"delta-{target}")
        apply_delta(stock_llama_dir, tmp_path / f"delta-{target}", tmp_path / f"rebuilt-{target}")
        expected = AutoModelForCausalLM.from_pretrained(tmp_path / target).state_dict()
        rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / f"rebuilt-{target}").state_dict()
        assert rebuilt.keys() == expected.keys()
        for name in expected:
            assert torch.equal(rebuilt[name], expected[name]), (target, name)
    assert rebuilt["model.embed_tokens.weight"].shape[0] == 4000
    assert load_file(next((tmp_path / "rebuilt-pad").glob("*.safetensors")))["model.embed_tokens.weight"].shape[0] \
        == 4001
