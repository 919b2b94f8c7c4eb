import pytest
import torch
import torch.nn.functional as F

from panda.constants import IGNORE_INDEX
from panda.data.collate import PackedCollator
from panda.data.records import Example, Segment
from panda.data.tokenize import encode_example
from panda.model.attention import block_causal_mask, packed_forward_kwargs


def test_block_causal_mask_exact():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_kwargs_per_implementation():
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "position_ids": torch.tensor([[0, 0, 1]])}
    eager = packed_forward_kwargs(batch, "eager")
    low = torch.finfo(torch.float32).min
    assert eager["attention_mask"].dtype == torch.float32
    assert eager["attention_mask"][0, 0].tolist() == [[0, low, low], [low, 0, low], [low, 0, 0]]
    assert packed_forward_kwargs(batch, "sdpa")["attention_mask"][0, 0].tolist() == [
        [True, False, False], [False, True, False], [False, True, True]]
    flash = packed_forward_kwargs(batch, "flash_attention_2")
    assert set(flash) == {"input_ids", "position_ids"} and flash["position_ids"] is batch["position_ids"]
    with pytest.raises(ValueError, match="'paged_magic' is not supported"):
        packed_forward_kwargs(batch, "paged_magic")


def per_token_loss(logits, labels):
    """(B, T, V), (B, T) → (B, T - 1) cross-entropy of predicting labels[t + 1] at t; 0 where ignored."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")


@pytest.fixture()
def packed_documents(tokenizer, chinese_paragraphs):
    texts = [(chinese_paragraphs[1][:12], True), (chinese_paragraphs[2][:30], True)]
    examples = [Example((Segment(texts[0][0], True),)),
                Example((Segment("请总结：" + texts[1][0], False), Segment("好的。", True))),
                Example((Segment(chinese_paragraphs[3][:20], True),))]
    documents = [{"input_ids": seq.input_ids, "labels": seq.labels, "source_id": i}
                 for i, ex in enumerate(examples) for seq in encode_example(ex, tokenizer, 64)]
    assert len(documents) == 3
    width = sum(len(d["input_ids"]) for d in documents) + 5  # a padding tail too
    batch = PackedCollator.from_tokenizer(tokenizer, width)([documents])
    return documents, batch


def tiny_model(config, attn_implementation):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_packed_loss_equals_each_document_alone(tiny_llama_config, packed_documents, attn_implementation):
    documents, batch = packed_documents
    model = tiny_model(tiny_llama_config, attn_implementation)
    with torch.no_grad():
        packed = per_token_loss(model(**packed_forward_kwargs(batch, attn_implementation)).logits, batch["labels"])
        start = 0
        for document in documents:
            ids = torch.tensor([document["input_ids"]])
            alone = per_token_loss(model(input_ids=ids).logits, torch.tensor([document["labels"]]))[0]
            end = start + ids.shape[1]
            assert alone.gt(0).sum() > 0
            torch.testing.assert_close(packed[0, start:end - 1], alone, atol=1e-5, rtol=1e-5)
            start = end


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_without_block_mask_documents_leak_into_each_other(tiny_llama_config, packed_documents,
                                                           attn_implementation):
    documents, batch = packed_documents
    model = tiny_model(tiny_llama_config, attn_implementation)
    with torch.no_grad():
        masked = per_token_loss(model(**packed_forward_kwargs(batch, attn_implementation)).logits, batch["labels"])
        # a plain 2D mask turns off transformers' own packed-sequence detection: ordinary causal attention
        leaky = per_token_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     attention_mask=batch["attention_mask"]).logits, batch["labels"])
    first = len(documents[0]["input_ids"])
    torch.testing.assert_close(leaky[0, :first - 1], masked[0, :first - 1], atol=1e-5, rtol=1e-5)
    assert (leaky[0, first:] - masked[0, first:]).abs().max() > 1e-3
