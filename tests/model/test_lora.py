"""LoRA through peft: only adapters train, only adapters are checkpointed, merging reproduces the adapted model."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from panda.model import LoraSettings, PandaLM


def _fit(model, datamodule, tmp_path, steps=3):
    trainer = Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule)
    return trainer


def test_lora_trains_only_the_adapters(tiny_config, contract_datamodule, tmp_path):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config, lora=LoraSettings(r=4, alpha=8, dropout=0.0,
                                                          target_modules=["q_proj", "v_proj"]))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    assert len(trainable) == 2 * 2 * tiny_config["num_hidden_layers"]  # A and B, two projections per layer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _fit(model, contract_datamodule, tmp_path)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    # lora_B starts at zero, so after a few steps both A and B have moved; nothing else has
    assert changed == set(trainable)


def test_checkpoint_holds_only_adapters_and_reloads(tiny_config, contract_datamodule, tmp_path):
    torch.manual_seed(0)
    settings = LoraSettings(r=4, alpha=8, dropout=0.0)
    model = PandaLM(config=tiny_config, lora=settings)
    trainer = _fit(model, contract_datamodule, tmp_path)
    path = tmp_path / "adapters.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and all(".lora_" in key for key in state)

    torch.manual_seed(0)  # the frozen body is rebuilt from the same config/seed (in practice: model.pretrained)
    restored = PandaLM.load_from_checkpoint(path)
    for key, value in state.items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_merged_model_matches_the_adapted_model(tiny_config, contract_datamodule, tmp_path):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    _fit(model, contract_datamodule, tmp_path)
    merged = model.merged_hf_model()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in key for key in merged.state_dict())
    assert any("lora" in key for key in model.state_dict())  # the training model is left as it was
    batch = next(iter(contract_datamodule.train_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = model(batch)
        merged_logits = merged(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        plain = PandaLM(config=tiny_config)
        plain.model = merged
        torch.testing.assert_close(plain(batch), expected, rtol=1e-4, atol=1e-4)
    assert merged_logits.shape == expected.shape


def test_bad_lora_settings_are_named(tiny_config):
    with pytest.raises(ValueError, match="q_projection"):
        PandaLM(config=tiny_config, lora=LoraSettings(target_modules=["q_projection"]))
    with pytest.raises(ValueError, match="exclude each other"):
        PandaLM(config=tiny_config, lora=LoraSettings(), trainable="embeddings")


def test_lora_with_activation_checkpointing_gets_adapter_gradients(tiny_config, contract_datamodule):
    torch.manual_seed(0)
    model = PandaLM(config=tiny_config, activation_checkpointing=True, lora=LoraSettings(r=4, dropout=0.0))
    batch = next(iter(contract_datamodule.train_dataloader()))
    model.train()
    model._losses(batch)[0].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)


# ---- QLoRA: bitsandbytes runs 4-bit NF4 on CPU too (0.45+), so the real path is tested here ----------------------

@pytest.fixture()
def base_dir(tiny_config, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**tiny_config)).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_qlora_trains_adapters_over_a_4bit_body_and_exports_a_plain_merged_model(base_dir, contract_datamodule,
                                                                                 tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], quantize="nf4",
                            compute_dtype="float32")
    model = PandaLM(pretrained=str(base_dir), lora=settings, monitor_throughput=False)
    projection = model.hf_model.model.layers[0].self_attn.k_proj
    assert isinstance(projection, bnb.nn.Linear4bit) and projection.weight.dtype == torch.uint8  # packed NF4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    _fit(model, contract_datamodule, tmp_path)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)

    merged = model.merged_hf_model()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    batch = next(iter(contract_datamodule.train_dataloader()))
    with torch.no_grad():
        adapted = model.model(input_ids=batch["input_ids"]).logits
        plain = merged(input_ids=batch["input_ids"]).logits
    # the merge is folded into the 4-bit weights (peft), so the two agree up to NF4's rounding of the update
    assert torch.allclose(adapted, plain, atol=0.05), (adapted - plain).abs().max()


def test_qlora_without_bitsandbytes_stops_at_start_in_one_line(base_dir, monkeypatch):
    import sys

    from panda.errors import UserError

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when not installed
    with pytest.raises(UserError, match=r"^model.init_args.lora.quantize=nf4 needs bitsandbytes, which is not "
                                        r"installed: pip install '.\[qlora\]'$"):
        PandaLM(pretrained=str(base_dir), lora=LoraSettings(quantize="nf4"))


def test_zero3_with_a_4bit_body_is_refused_naming_the_key():
    from types import SimpleNamespace

    from panda.errors import ConfigError
    from panda.training.strategy import PandaDeepSpeedStrategy

    strategy = PandaDeepSpeedStrategy(stage=3)
    strategy._lightning_module = SimpleNamespace(lora=LoraSettings(quantize="nf4"))
    with pytest.raises(ConfigError, match=r"trainer.strategy.init_args.stage=3 with "
                                          r"model.init_args.lora.quantize=nf4: ZeRO-3 partitions the weights"):
        strategy.setup_environment()
    strategy = PandaDeepSpeedStrategy(stage=2)
    strategy._lightning_module = SimpleNamespace(lora=LoraSettings(quantize="nf4"))
    from panda.model.lora import refuse_partitioned_4bit

    refuse_partitioned_4bit(LoraSettings(quantize="nf4"), 2)  # stage 1/2 keep whole weights: allowed
