import pytest
import torch
import torch.nn.functional as F

from panda.constants import IGNORE_INDEX
from panda.data.collate import PackedCollator
from panda.data.records import Example, Segment
from panda.data.tokenize import encode_example
from panda.model import attention
from panda.model.attention import block_causal_mask, document_block_mask, kernel_mask, packed_forward_kwargs, \
    resolve_attn_implementation


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
    assert packed_forward_kwargs(batch, "sdpa")["attention_mask"][0, 0].tolist() == [  # CPU: additive as well
        [0, low, low], [low, 0, low], [low, 0, 0]]
    flex = packed_forward_kwargs(batch, "flex_attention")
    assert set(flex) == {"input_ids", "position_ids", "attention_mask"} and flex["position_ids"] is batch["position_ids"]
    for boundaries in ("document_sdpa", "varlen", "flash_attention_2"):
        kwargs = packed_forward_kwargs(batch, boundaries)
        assert kwargs["cu_seq_lens_q"].tolist() == [0, 1, 3]
        if boundaries == "flash_attention_2":  # transformers' integration takes no 4D mask
            assert "attention_mask" not in kwargs
        else:  # ours get an empty 4D mask, so that transformers builds no dense one they would not read
            assert kwargs["attention_mask"].shape == (1, 1, 0, 0)
    with pytest.raises(ValueError, match="'paged_magic' is not supported"):
        packed_forward_kwargs(batch, "paged_magic")


def per_token_loss(logits, labels):
    """(B, T, V), (B, T) → (B, T - 1) cross-entropy of predicting labels[t + 1] at t; 0 where ignored."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")


def reference_flash_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, **kwargs):
    """What flash-attention's varlen kernel computes, on CPU: causal attention within each cu_seq_lens span of the
    flattened (B·T) tokens. transformers reserves names containing "flash" for real kernels, so the model runs this
    under its own name and is fed the kwargs ``packed_forward_kwargs`` makes for ``flash_attention_2``."""
    assert attention_mask is None and cu_seq_lens_q is not None and torch.equal(cu_seq_lens_q, cu_seq_lens_k)
    batch, heads, length, dim = query.shape  # (B, H, T, D)
    q, k, v = (x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value))  # (B·T, H, D)
    out = torch.empty_like(q)
    bounds = cu_seq_lens_q.tolist()
    assert max_length_q == max(e - s for s, e in zip(bounds[:-1], bounds[1:]))
    for s, e in zip(bounds[:-1], bounds[1:]):
        out[s:e] = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                                  v[s:e].transpose(0, 1), is_causal=True, scale=scaling).transpose(0, 1)
    return out.view(batch, length, heads, dim), None


VARLEN_ON_CPU = "varlen_reference"


@pytest.fixture(scope="module", autouse=True)
def _register_reference_flash():
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ON_CPU, reference_flash_varlen)


@pytest.fixture()
def packed_documents(tokenizer, chinese_paragraphs):
    """Two packed rows: [plain text, instruction, padding] and [plain text, padding]."""
    examples = [Example((Segment(chinese_paragraphs[1][:12], True),)),
                Example((Segment("请总结：" + chinese_paragraphs[2][:30], False), Segment("好的。", True))),
                Example((Segment(chinese_paragraphs[3][:20], True),))]
    documents = [{"input_ids": seq.input_ids, "labels": seq.labels, "source_id": i}
                 for i, ex in enumerate(examples) for seq in encode_example(ex, tokenizer, 64)]
    assert len(documents) == 3
    rows = [[documents[0], documents[1]], [documents[2]]]
    width = len(documents[0]["input_ids"]) + len(documents[1]["input_ids"]) + 5  # row 0 has a padding tail too
    return rows, PackedCollator.from_tokenizer(tokenizer, width)(rows)


def tiny_model(config, attn_implementation):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config).eval()


def reference_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                            enable_gqa=False):
    """``torch.nn.attention.varlen.varlen_attn``'s contract, computed on CPU (the real kernel is CUDA-only)."""
    assert window_size == (-1, 0) and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and max_q == max_k
    if enable_gqa:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    bounds = cu_q.tolist()
    assert max_q == max(e - s for s, e in zip(bounds[:-1], bounds[1:]))
    return torch.cat([F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                                     v[s:e].transpose(0, 1), is_causal=True, scale=scale)
                      .transpose(0, 1) for s, e in zip(bounds[:-1], bounds[1:])])


@pytest.fixture()
def varlen_on_cpu(monkeypatch):
    """The CPU stand-in for the CUDA kernel; packed calls must not fall back to stock SDPA (which would also be
    exact here, through transformers' own packing detection, and hide a path that is never taken)."""
    from torch.nn.attention import varlen

    def no_fallback(*args, **kwargs):
        raise AssertionError("a packed batch reached the stock-SDPA fallback")

    monkeypatch.setattr(varlen, "varlen_attn", reference_varlen_kernel)
    monkeypatch.setattr(attention, "sdpa_attention_forward", no_fallback)


IMPLEMENTATIONS = [("eager", "eager"), ("sdpa", "sdpa"), ("document_sdpa", "document_sdpa"),
                   ("varlen", "varlen"), (VARLEN_ON_CPU, "flash_attention_2"),
                   pytest.param("flex_attention", "flex_attention", marks=pytest.mark.slow)]  # compiles: ~1 min


@pytest.mark.parametrize(("attn_implementation", "kwargs_for"), IMPLEMENTATIONS)
def test_packed_loss_equals_each_document_alone(tiny_llama_config, packed_documents, attn_implementation,
                                                kwargs_for, varlen_on_cpu):
    rows, batch = packed_documents
    model = tiny_model(tiny_llama_config, attn_implementation)
    reference = tiny_model(tiny_llama_config.__class__(**tiny_llama_config.to_dict()), "eager")
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        packed = per_token_loss(model(**packed_forward_kwargs(batch, kwargs_for)).logits, batch["labels"])
        for b, row in enumerate(rows):
            start = 0
            for document in row:
                ids = torch.tensor([document["input_ids"]])
                alone = per_token_loss(reference(input_ids=ids).logits, torch.tensor([document["labels"]]))[0]
                end = start + ids.shape[1]
                assert alone.gt(0).sum() > 0
                torch.testing.assert_close(packed[b, start:end - 1], alone, atol=1e-5, rtol=1e-5)
                start = end


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_without_block_mask_documents_leak_into_each_other(tiny_llama_config, packed_documents,
                                                           attn_implementation):
    rows, batch = packed_documents
    model = tiny_model(tiny_llama_config, attn_implementation)
    with torch.no_grad():
        masked = per_token_loss(model(**packed_forward_kwargs(batch, attn_implementation)).logits, batch["labels"])
        # a plain 2D mask turns off transformers' own packed-sequence detection: ordinary causal attention
        leaky = per_token_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     attention_mask=batch["attention_mask"]).logits, batch["labels"])
    first = len(rows[0][0]["input_ids"])
    torch.testing.assert_close(leaky[0, :first - 1], masked[0, :first - 1], atol=1e-5, rtol=1e-5)
    assert (leaky[0, first:] - masked[0, first:]).abs().max() > 1e-3


def test_flash_kwargs_are_document_boundaries_over_the_flattened_batch():
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long),
             "position_ids": torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]])}
    kwargs = packed_forward_kwargs(batch, "flash_attention_2")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10] and kwargs["cu_seq_lens_k"].tolist() == [0, 3, 5, 7, 10]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 3 and "attention_mask" not in kwargs


@pytest.mark.parametrize("attn_implementation", ["document_sdpa", "varlen"])
def test_boundary_paths_give_the_dense_mask_gradients(tiny_llama_config, packed_documents, attn_implementation,
                                                      varlen_on_cpu):
    tiny_llama_config.num_key_value_heads = tiny_llama_config.num_attention_heads // 2  # exercise GQA too
    _, batch = packed_documents
    model = tiny_model(tiny_llama_config, "sdpa").train()
    grads = {}
    for path in ("sdpa", attn_implementation):
        model.set_attn_implementation(path)
        model.zero_grad()
        logits = model(**packed_forward_kwargs(batch, path)).logits
        loss = per_token_loss(logits, batch["labels"]).sum()
        loss.backward()
        grads[path] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["sdpa"][0], grads[attn_implementation][0], atol=1e-5, rtol=1e-5)
    for dense, boundary in zip(grads["sdpa"][1], grads[attn_implementation][1]):
        torch.testing.assert_close(dense, boundary, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn_implementation", ["document_sdpa", "varlen"])
def test_packed_calls_build_no_dense_mask(tiny_llama_config, packed_documents, attn_implementation, varlen_on_cpu):
    """transformers would build a (B, 1, T, T) document mask from the position ids in every packed forward."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    def no_dense_mask(**kwargs):
        raise AssertionError("a packed call built a dense mask")

    _, batch = packed_documents
    model = tiny_model(tiny_llama_config, attn_implementation)
    stock = ALL_MASK_ATTENTION_FUNCTIONS[attn_implementation]
    ALL_MASK_ATTENTION_FUNCTIONS.register(attn_implementation, no_dense_mask)
    try:
        with torch.no_grad():
            model(**packed_forward_kwargs(batch, attn_implementation))
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS.register(attn_implementation, stock)


def test_document_sdpa_calls_the_kernel_with_4d_inputs(tiny_llama_config, packed_documents, monkeypatch):
    """CPU's flash kernel takes (B, H, L, D) only; 3D (H, L, D) inputs silently run the 2× slower math path."""
    stock, shapes = F.scaled_dot_product_attention, []

    def spy(query, key, value, **kwargs):
        shapes.append(query.dim())
        return stock(query, key, value, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    _, batch = packed_documents
    with torch.no_grad():
        tiny_model(tiny_llama_config, "document_sdpa")(**packed_forward_kwargs(batch, "document_sdpa"))
    assert shapes and set(shapes) == {4}


def test_registered_paths_without_boundaries_are_stock_sdpa(tiny_llama_config):
    """Generation and scoring call the model with a 2D padding mask: the registered paths must mask it as SDPA."""
    model = tiny_model(tiny_llama_config, "sdpa")
    input_ids = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        stock = model(input_ids=input_ids, attention_mask=mask).logits
        for path in ("document_sdpa", "varlen"):
            model.set_attn_implementation(path)
            torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask).logits, stock)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_document_block_mask_allows_what_the_dense_mask_allows():
    from torch.nn.attention.flex_attention import flex_attention

    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 1]])
    q, k, v = torch.randn(3, 2, 2, 10, 8, generator=torch.Generator().manual_seed(0)).unbind(0)  # (B, H, T, D)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(position_ids))
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=document_block_mask(position_ids)), dense)


def test_kernel_mask_forms():
    allowed = torch.tensor([[[[True, False], [True, True]]]])
    low = torch.finfo(torch.bfloat16).min
    assert kernel_mask(allowed, "eager", torch.bfloat16)[0, 0].tolist() == [[0, low], [0, 0]]
    assert kernel_mask(allowed, "sdpa", torch.float32).dtype == torch.float32  # CPU: additive, built once
    assert kernel_mask(allowed, "sdpa", torch.float32)[0, 0, 0, 1] == torch.finfo(torch.float32).min


def test_auto_picks_the_fastest_exact_path_per_device(monkeypatch):
    assert resolve_attn_implementation("auto", "cpu") == "document_sdpa"
    assert resolve_attn_implementation("auto", "cuda", "32-true") == "document_sdpa"
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    assert resolve_attn_implementation("auto", "cuda", "bf16-mixed") == "varlen"
    with pytest.raises(ValueError, match=r"model.attn_implementation=flash_attention_2 needs the flash-attn "):
        resolve_attn_implementation("flash_attention_2", "cuda", "bf16-mixed")
    with pytest.raises(ValueError, match=r"model.attn_implementation=varlen runs on CUDA in bf16/fp16 only"):
        resolve_attn_implementation("varlen", "cpu")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert resolve_attn_implementation("auto", "cuda", "bf16-mixed") == "flash_attention_2"
    assert resolve_attn_implementation("sdpa", "cuda", "bf16-mixed") == "sdpa"
