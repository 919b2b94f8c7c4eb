import json

import lightning as L
import pytest
import torch

from panda.model import LoraSettings, PandaLM
from panda.weights.export import build_model, export_checkpoint, read_checkpoint
from panda.weights.shards import WeightFileError

CONFIG_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]


@pytest.fixture()
def tiny_config(tiny_llama_config) -> dict:
    return {key: getattr(tiny_llama_config, key) for key in CONFIG_KEYS}


@pytest.fixture()
def input_ids(tokenizer, chinese_paragraphs) -> torch.Tensor:
    return tokenizer(chinese_paragraphs[:2], return_tensors="pt", padding=True, truncation=True,
                     max_length=24)["input_ids"]


def save_checkpoint(module: L.LightningModule, path) -> None:
    """Write ``module`` as Lightning's Trainer does (same keys, hyper_parameters pickled the same way)."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def randomize_adapters(module: PandaLM) -> None:
    """LoRA's B starts at zero (no effect); give the adapters weights so that merging them matters."""
    generator = torch.Generator().manual_seed(1)
    for name, parameter in module.named_parameters():
        if "lora_" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1


def test_export_round_trip_gives_the_modules_logits(tmp_path, tiny_config, tokenizer_dir, tokenizer, input_ids):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    module = PandaLM(config=tiny_config, monitor_throughput=False)
    save_checkpoint(module, tmp_path / "last.ckpt")

    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir), max_shard_size="200KB")

    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json"} <= set(files)
    assert len([f for f in files if f.startswith("model-") and f.endswith(".safetensors")]) > 1
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        expected = module.model(input_ids=input_ids).logits
        torch.testing.assert_close(exported(input_ids=input_ids).logits, expected, rtol=0, atol=0)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert reloaded_tokenizer("人民日报")["input_ids"] == tokenizer("人民日报")["input_ids"]


def test_export_output_is_readable_by_others_as_the_umask_says(tmp_path, tiny_config, tokenizer_dir):
    import os
    import stat

    module = PandaLM(config=tiny_config, monitor_throughput=False)
    save_checkpoint(module, tmp_path / "last.ckpt")
    previous = os.umask(0o022)
    try:
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()} == {0o644}
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == 2


def test_export_casts_to_the_requested_dtype(tmp_path, tiny_config, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    module = PandaLM(config=tiny_config, monitor_throughput=False)
    save_checkpoint(module, tmp_path / "last.ckpt")
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir), dtype="bfloat16")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert {p.dtype for p in exported.parameters()} == {torch.bfloat16}
    assert torch.equal(exported.get_input_embeddings().weight, module.model.get_input_embeddings().weight.bfloat16())


def test_checkpoint_tensors_become_the_parameters_without_a_copy(tmp_path, tiny_config):
    save_checkpoint(PandaLM(config=tiny_config, monitor_throughput=False), tmp_path / "last.ckpt")
    checkpoint = read_checkpoint(tmp_path / "last.ckpt")
    model = build_model(checkpoint)
    assert model.get_input_embeddings().weight.data_ptr() == \
        checkpoint.state_dict["model.model.embed_tokens.weight"].data_ptr()
    assert all(p.data_ptr() == checkpoint.state_dict[f"model.{n}"].data_ptr() for n, p in model.named_parameters())


@pytest.mark.parametrize("save_adapters_only", [True, False])
def test_lora_checkpoint_is_exported_merged(tmp_path, tiny_llama_config, tokenizer_dir, input_ids,
                                            save_adapters_only):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config).save_pretrained(tmp_path / "base")
    module = PandaLM(pretrained=str(tmp_path / "base"), monitor_throughput=False,
                     lora=LoraSettings(r=4, target_modules=["q_proj", "v_proj"], save_adapters_only=save_adapters_only))
    randomize_adapters(module)
    module.eval()
    save_checkpoint(module, tmp_path / "lora.ckpt")
    keys = torch.load(tmp_path / "lora.ckpt", weights_only=False)["state_dict"]
    assert all("lora_" in key for key in keys) == save_adapters_only

    export_checkpoint(tmp_path / "lora.ckpt", tmp_path / "merged", tokenizer=str(tokenizer_dir))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        expected = module.model(input_ids=input_ids).logits
        torch.testing.assert_close(merged(input_ids=input_ids).logits, expected, rtol=1e-5, atol=1e-5)
        base = LlamaForCausalLM.from_pretrained(tmp_path / "base")
        assert not torch.allclose(base(input_ids=input_ids).logits, expected, atol=1e-3)  # adapters matter


def test_lora_checkpoint_is_exported_as_adapters(tmp_path, tiny_llama_config, tokenizer_dir, input_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config).save_pretrained(tmp_path / "base")
    module = PandaLM(pretrained=str(tmp_path / "base"), monitor_throughput=False, lora=LoraSettings(r=4))
    randomize_adapters(module)
    module.eval()
    save_checkpoint(module, tmp_path / "lora.ckpt")

    export_checkpoint(tmp_path / "lora.ckpt", tmp_path / "adapters", tokenizer=str(tokenizer_dir),
                      lora_mode="adapters")

    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    assert not list((tmp_path / "adapters").glob("model*.safetensors"))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapters")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, module.model(input_ids=input_ids).logits)


class Gadget:
    """Stands for any class an attacker could make a pickle construct."""


def test_checkpoint_with_foreign_objects_is_refused(tmp_path, tiny_config, tokenizer_dir):
    torch.save({"state_dict": {}, "hyper_parameters": {"config": tiny_config, "extra": Gadget()}},
               tmp_path / "odd.ckpt")
    with pytest.raises(WeightFileError, match=r"odd.ckpt: refusing to unpickle .*Gadget"):
        export_checkpoint(tmp_path / "odd.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "hf").exists()


def test_missing_tensor_is_named_and_nothing_is_written(tmp_path, tiny_config, tokenizer_dir):
    module = PandaLM(config=tiny_config, monitor_throughput=False)
    state = {f"model.{k}": v for k, v in module.model.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    torch.save({"state_dict": state, "hyper_parameters": {"config": tiny_config}}, tmp_path / "partial.ckpt")
    with pytest.raises(WeightFileError, match=r"partial.ckpt: no tensor for model.model.layers.1.mlp.up_proj.weight"):
        export_checkpoint(tmp_path / "partial.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "hf").exists()


def write_zero_checkpoint(tmp_path, tiny_config) -> None:
    """Run :func:`zero_worker` in a clean subprocess: ``tmp_path/zero`` (a real CPU ZeRO-2 checkpoint) and
    ``tmp_path/expected.pt`` (the trained module's logits)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, __file__, str(tmp_path), json.dumps(tiny_config)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "zero").is_dir()


@pytest.mark.slow
def test_deepspeed_zero_checkpoint_directory_is_exported(tmp_path, tiny_config, tokenizer_dir):
    """A real ZeRO-2 checkpoint (CPU DeepSpeed, in a subprocess) → HF directory with the trained module's logits."""
    from transformers import AutoModelForCausalLM

    write_zero_checkpoint(tmp_path, tiny_config)
    export_checkpoint(tmp_path / "zero", tmp_path / "hf", tokenizer=str(tokenizer_dir))

    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=expected["input_ids"]).logits, expected["logits"])


def zero_worker(output: str, config_json: str) -> None:
    """Train PandaLM one step under ZeRO-2 on CPU, save the DeepSpeed checkpoint and the module's logits."""
    from torch.utils.data import DataLoader

    from panda.training.strategy import CPUDeepSpeedStrategy

    config = json.loads(config_json)
    torch.manual_seed(0)
    module = PandaLM(config=config, monitor_throughput=False)
    ids = torch.randint(4, config["vocab_size"], (2, 16))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(16).repeat(2, 1),
             "attention_mask": torch.ones_like(ids), "source_ids": torch.zeros_like(ids)}
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=1, logger=False,
                        strategy=CPUDeepSpeedStrategy(stage=2, logging_batch_size_per_gpu=1),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(f"{output}/zero")
    module.eval()
    with torch.no_grad():
        logits = module.model(input_ids=ids).logits
    torch.save({"input_ids": ids, "logits": logits}, f"{output}/expected.pt")


if __name__ == "__main__":
    import sys

    zero_worker(*sys.argv[1:])


def test_export_carries_the_chat_format_as_a_chat_template(tmp_path, tiny_config, tokenizer_dir):
    """Servers read ``chat_template`` from tokenizer_config.json; it must prompt with the training ids."""
    from transformers import AutoTokenizer

    from panda.data.chat_format import ChatFormat, prompt_ids
    from panda.data.tokenizer import load_tokenizer

    module = PandaLM(config=tiny_config, monitor_throughput=False)
    module.chat_format = ChatFormat("roles")
    save_checkpoint(module, tmp_path / "last.ckpt")
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf", tokenizer=str(tokenizer_dir))

    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["panda_chat_format"] == {"name": "roles", "multi_turn": "conversation", "join": " "}
    assert "用户: " in config["chat_template"] and not (tmp_path / "hf" / "chat_template.jinja").exists()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "今天天气怎么样？"}]
    rendered = reloaded.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(rendered) == prompt_ids(ChatFormat("roles").segments(messages), load_tokenizer(tokenizer_dir))
