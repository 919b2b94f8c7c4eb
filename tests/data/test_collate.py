import pytest
import torch

from panda.constants import IGNORE_INDEX as X
from panda.data.collate import BATCH_KEYS, PackedCollator, document_ids
from panda.data.packing import pack
from panda.data.records import Example, Segment
from panda.data.tokenize import encode_example

PAD = 3


def doc(ids, labels, source_id):
    return {"input_ids": ids, "labels": labels, "source_id": source_id}


A = doc([1, 10, 11, 12], [X, X, 11, 12], 0)
B = doc([1, 20, 21], [X, 20, 21], 1)
C = doc([1, 30], [X, 30], 0)


def test_packed_rows_padded_to_max():
    batch = PackedCollator(PAD, 10)([[A, B], [C]])
    assert list(batch) == list(BATCH_KEYS)
    assert all(t.dtype == torch.long and t.shape == (2, 10) for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 1, 20, 21, PAD, PAD, PAD],
                                           [1, 30, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[X, X, 11, 12, X, 20, 21, X, X, X],
                                        [X, 30, X, X, X, X, X, X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2],
                                              [0, 1, 0, 1, 2, 3, 4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                                                [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["source_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, -1, -1, -1],
                                            [0, 0, -1, -1, -1, -1, -1, -1, -1, -1]]
    assert document_ids(batch["position_ids"]).tolist() == [[1, 1, 1, 1, 2, 2, 2, 3, 3, 3],
                                                            [1, 1, 2, 2, 2, 2, 2, 2, 2, 2]]


def test_pad_to_longest_and_multiple():
    batch = PackedCollator(PAD, 10, pad_to="longest")([[A, B], [C]])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert PackedCollator(PAD, 10, pad_to="longest", pad_to_multiple_of=4)([[A], [C]])["input_ids"].shape == (2, 4)
    assert PackedCollator(PAD, 10, pad_to="longest", pad_to_multiple_of=8)([[A, B]])["input_ids"].shape == (1, 8)
    assert PackedCollator(PAD, 6, pad_to="longest", pad_to_multiple_of=8)([[A]])["input_ids"].shape == (1, 6)


def test_unpacked_mode_one_document_per_row():
    batch = PackedCollator(PAD, 5)([A, C])
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, PAD], [1, 30, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[X, X, 11, 12, X], [X, 30, X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    assert batch["source_ids"].tolist() == [[0, 0, 0, 0, -1], [0, 0, -1, -1, -1]]


def test_full_row_has_no_padding_run():
    batch = PackedCollator(PAD, 7)([[A, B]])
    assert batch["attention_mask"].tolist() == [[1] * 7]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]


def test_overlong_row_and_mismatched_labels_are_errors():
    with pytest.raises(ValueError, match="row 0 of the batch holds 7 tokens > max_seq_length=6"):
        PackedCollator(PAD, 6)([[A, B]])
    with pytest.raises(ValueError, match="equal length"):
        PackedCollator(PAD, 6)([[doc([1, 2], [X], 0)]])
    with pytest.raises(ValueError, match="pad_to"):
        PackedCollator(PAD, 6, pad_to="min")


def test_from_tokenizer_end_to_end(tokenizer, chinese_paragraphs):
    sequences = [seq for text in chinese_paragraphs[:40]
                 for seq in encode_example(Example((Segment(text, True),)), tokenizer, 128)]
    documents = [doc(seq.input_ids, seq.labels, i % 2) for i, seq in enumerate(sequences)]
    rows = pack([len(d["input_ids"]) for d in documents], 128)
    batch = PackedCollator.from_tokenizer(tokenizer, 128)([[documents[i] for i in row] for row in rows])
    real = batch["attention_mask"].bool()
    assert batch["input_ids"][~real].eq(tokenizer.pad_token_id).all()
    assert int(real.sum()) == sum(len(d["input_ids"]) for d in documents)
    starts = (batch["position_ids"] == 0) & real
    assert int(starts.sum()) == len(documents)
    assert batch["input_ids"][starts].eq(tokenizer.bos_token_id).all()
    assert batch["labels"][starts].eq(X).all()


def test_stock_tokenizer_fills_with_unk_never_trained_never_attended(stock_llama_dir):
    """A tokenizer without pad token (stock LLaMA): padding holds </s> (2), label -100, and no real token attends
    to it; the real tokens' logits equal those of the unpadded rows."""
    from transformers import AutoModelForCausalLM

    from panda.data.tokenizer import load_tokenizer
    from panda.model.attention import block_causal_mask, packed_forward_kwargs

    collator = PackedCollator.from_tokenizer(load_tokenizer(stock_llama_dir, fill_pad=False), 8, pad_to="max")
    assert collator.pad_id == 2
    batch = collator([[A, C]])
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 1, 30, 2, 2]]
    assert batch["labels"].tolist() == [[X, X, 11, 12, X, 30, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    assert block_causal_mask(batch["position_ids"])[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],   # the padding run sees only itself
        [0, 0, 0, 0, 0, 0, 1, 1],
    ]
    model = AutoModelForCausalLM.from_pretrained(stock_llama_dir, attn_implementation="sdpa")
    with torch.no_grad():
        padded = model(**packed_forward_kwargs(batch, "sdpa")).logits[0]  # (T, V)
        alone = model(**packed_forward_kwargs(PackedCollator(2, 6, pad_to="max")([[A, C]]), "sdpa")).logits[0]
    torch.testing.assert_close(padded[:6], alone, rtol=1e-5, atol=1e-5)
