"""PandaLM: exact loss masking, a fast_dev_run fit, model construction, trainable modes and the vocabulary check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from panda.constants import IGNORE_INDEX
from panda.model import PandaLM
from panda.model.module import causal_lm_losses, check_vocabulary, chunked_causal_lm_losses, \
    loss_by_source
from tests.model.conftest import contract_batch

IG = IGNORE_INDEX


def _hand_loss(logits: torch.Tensor, input_ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Mean over ``positions`` t of -log p(input_ids[t+1] | logits[t]), written out without cross_entropy."""
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    return -torch.stack([log_probs[t, input_ids[0, t + 1]] for t in positions]).mean()


def _trainer(**kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return Trainer(**{**defaults, **kwargs})


def test_plain_text_loss_covers_every_token_after_bos(tokenizer, tiny_config):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config).eval()
    ids = tokenizer("人民日报社论")["input_ids"] + [tokenizer.eos_token_id]  # BOS ... EOS
    n = len(ids)
    batch = contract_batch([[(ids, [IG] + ids[1:], 0)]], width=n + 3, pad_id=tokenizer.pad_token_id)
    assert batch["labels"].tolist() == [[IG] + ids[1:] + [IG, IG, IG]]
    with torch.no_grad():
        logits = model(batch)
        losses, trained = causal_lm_losses(logits, batch["labels"])
    # predictions of ids[1..n-1] are trained: positions 0..n-2; the pad tail is not
    assert trained.tolist() == [[True] * (n - 1) + [False] * 3]
    loss = losses.sum() / trained.sum()
    expected = _hand_loss(logits, batch["input_ids"], list(range(n - 1)))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert model._losses(batch)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_instruction_loss_covers_only_the_response_and_eos(tokenizer, tiny_config):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config).eval()
    prompt = tokenizer("这条评论的情感是：很好用")["input_ids"]  # BOS + prompt, untrained
    response = tokenizer("正面", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, labels = prompt + response, [IG] * len(prompt) + response
    batch = contract_batch([[(ids, labels, 1)]], width=len(ids) + 2, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(batch)
        losses, trained = causal_lm_losses(logits, batch["labels"])
    p, r = len(prompt), len(response)
    # the last prompt position predicts the first response token; nothing before it is trained
    assert trained.tolist() == [[False] * (p - 1) + [True] * r + [False] * 2]
    expected = _hand_loss(logits, batch["input_ids"], list(range(p - 1, p - 1 + r)))
    assert model._losses(batch)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses[0, : p - 1].abs().sum() == 0


@pytest.mark.parametrize("chunk_tokens", [3, 4096])
def test_chunked_loss_equals_the_reference_loss_and_gradients(chunk_tokens):
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 7, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7), generator=generator)
    labels[0, :3] = IG  # a masked prompt
    labels[1, 5:] = IG  # padding
    grads = {}
    for name in ("reference", "chunked"):
        hidden.grad, head.weight.grad = None, None
        if name == "reference":
            losses, trained = causal_lm_losses(head(hidden), labels)
        else:
            losses, trained = chunked_causal_lm_losses(hidden, head, labels, chunk_tokens=chunk_tokens)
        assert losses.shape == trained.shape == (2, 6)
        (losses.sum() / trained.sum()).backward()
        grads[name] = (losses.detach(), trained, hidden.grad.clone(), head.weight.grad.clone())
    assert torch.equal(grads["reference"][1], grads["chunked"][1])
    assert grads["chunked"][0][~grads["chunked"][1]].eq(0).all()
    for reference, chunked in zip(grads["reference"], grads["chunked"]):
        torch.testing.assert_close(chunked, reference, atol=1e-6, rtol=1e-5)


def test_token_nll_equals_cross_entropy_under_any_upstream_gradient():
    from panda.model.module import _TokenNLL

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,), generator=generator)
    weights = torch.randn(6, generator=generator, dtype=torch.float64)  # per-token weights, e.g. per source
    ours = _TokenNLL.apply(logits, targets)
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    reference = F.cross_entropy(logits, targets, reduction="none")
    (expected,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=1e-10)


def test_training_loss_gradients_equal_the_full_logits_path(tiny_config, contract_datamodule):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config)
    batch = next(iter(contract_datamodule.train_dataloader()))
    model._losses(batch)[0].backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    losses, trained = causal_lm_losses(model(batch), batch["labels"])
    (losses.sum() / trained.sum()).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(chunked[name], parameter.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_chunked_loss_without_trained_tokens_is_zero_and_differentiable():
    head = torch.nn.Linear(4, 9, bias=False)
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    losses, trained = chunked_causal_lm_losses(hidden, head, torch.full((1, 3), IG))
    loss = losses.sum() / trained.sum().clamp(min=1)
    loss.backward()
    assert loss.item() == 0 and not trained.any() and hidden.grad.eq(0).all()


def test_loss_by_source_attributes_each_prediction_to_its_target_token():
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])  # (1, T-1) for T = 6
    trained = torch.tensor([[True, True, False, True, True]])
    source_ids = torch.tensor([[0, 0, 0, 1, 1, -1]])  # doc of source 0, doc of source 1, one pad
    sums, counts = loss_by_source(losses, trained, source_ids, num_sources=2)
    # targets' sources: [0, 0, 1, 1, -1] → source 0: 1 + 2, source 1: 4 (position 2 untrained), pad dropped
    assert sums.tolist() == [3.0, 4.0] and counts.tolist() == [2.0, 1.0]


def test_fast_dev_run_fit_logs_losses_per_stage_and_source(tiny_config, contract_datamodule):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config, source_names=contract_datamodule.source_names)
    trainer = _trainer(max_steps=4, limit_val_batches=2, val_check_interval=4, log_every_n_steps=1)
    trainer.fit(model, contract_datamodule)
    metrics = trainer.callback_metrics
    for key in ["train/loss", "train/ppl", "train/grad_norm", "val/loss", "val/ppl", "val/loss/news",
                "val/loss/instructions"]:
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["val/ppl"].item() == pytest.approx(torch.exp(metrics["val/loss"]).item(), rel=1e-5)
    assert model.schedule_plan.total_steps == 4 and model.schedule_plan.warmup_steps == 1

    # without the data's source names (a model built in Python, not by `panda fit`) there is no per-source split
    plain = PandaLM(config=tiny_config)
    plain_trainer = _trainer(fast_dev_run=True)
    plain_trainer.fit(plain, contract_datamodule)
    assert plain_trainer.global_step == 1 and torch.isfinite(plain_trainer.callback_metrics["train/loss"])
    assert not any(key.startswith(("train/loss/", "val/loss/")) for key in plain_trainer.callback_metrics)


def test_auto_attention_resolves_for_the_device_and_says_so(tiny_config, contract_datamodule, caplog):
    model = PandaLM(config=tiny_config)  # attn_implementation="auto"
    with caplog.at_level("INFO"):
        _trainer(fast_dev_run=True).fit(model, contract_datamodule)
    assert model.attn_implementation == model.hf_model.config._attn_implementation == "document_sdpa"
    assert "attention: document_sdpa — per-document causal SDPA" in caplog.text
    with pytest.raises(ValueError, match="model.attn_implementation=varlen runs on CUDA in bf16/fp16 only"):
        _trainer(fast_dev_run=True).fit(PandaLM(config=tiny_config, attn_implementation="varlen"),
                                        contract_datamodule)


def test_val_loss_is_token_weighted_over_the_whole_set(tiny_config, contract_datamodule):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config)
    trainer = _trainer(limit_val_batches=3)
    trainer.validate(model, contract_datamodule, verbose=False)
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(contract_datamodule.val_dataloader()):
            if i == 3:
                break
            loss, _, _, n = model._losses(batch)
            total, count = total + loss.item() * n.item(), count + n.item()
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(total / count, rel=1e-5)


def test_builds_from_a_pretrained_directory(tmp_path, tiny_config, contract_datamodule):
    torch.manual_seed(0)
    source = PandaLM(config=tiny_config)
    source.hf_model.save_pretrained(tmp_path / "hf")
    loaded = PandaLM(pretrained=str(tmp_path / "hf"), attn_implementation="eager")
    batch = next(iter(contract_datamodule.train_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(loaded._losses(batch)[0], source._losses(batch)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model.pretrained="):
        PandaLM(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="model.config"):
        PandaLM()


def test_activation_checkpointing_keeps_the_gradients(tiny_config, contract_datamodule):
    batch = next(iter(contract_datamodule.train_dataloader()))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PandaLM(config=tiny_config, activation_checkpointing=checkpointing)
        assert model.hf_model.is_activation_checkpointing is checkpointing
        model.train()
        model._losses(batch)[0].backward()
        grads.append(model.hf_model.model.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_embedding_only_mode_trains_only_embeddings_and_head(tiny_config, contract_datamodule):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config, trainable="embeddings")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.model.embed_tokens.weight", "model.lm_head.weight"}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _trainer(max_steps=2, limit_val_batches=0).fit(model, contract_datamodule)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) is (name not in trainable), name


def test_vocabulary_check_names_both_sizes(tiny_config, tokenizer_dir, tokenizer):
    small = PandaLM(config={**tiny_config, "vocab_size": len(tokenizer) - 1})
    with pytest.raises(ValueError, match=f"{len(tokenizer) - 1} vocabulary rows .* {len(tokenizer)} tokens"):
        check_vocabulary(small.hf_model, str(tokenizer_dir))
    check_vocabulary(PandaLM(config=tiny_config).hf_model, str(tokenizer_dir))
    check_vocabulary(PandaLM(config=tiny_config).hf_model, tokenizer)  # a loaded tokenizer works too


def test_merged_hf_model_is_a_plain_copy(tiny_config):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config)
    merged = model.merged_hf_model()
    assert type(merged).__name__ == "LlamaForCausalLM" and merged is not model.hf_model
    assert torch.equal(merged.model.embed_tokens.weight, model.hf_model.model.embed_tokens.weight)
