
import pytest
import torch

from panda.data.chat_format import ChatFormat
from panda.errors import UserError
from panda.model import LoraSettings, PandaLM
from panda.weights.export import export_checkpoint, read_checkpoint
from panda.weights.loading import load_pretrained
from tests.weights.test_export import CONFIG_KEYS, randomize_adapters, save_checkpoint


@pytest.fixture()
def tiny_config(tiny_llama_config) -> dict:
    return {key: getattr(tiny_llama_config, key) for key in CONFIG_KEYS}


@pytest.fixture()
def input_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("人民日报社论")["input_ids"]])


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_checkpoint_loads_with_one_copy_of_the_weights_and_its_chat_format(tmp_path, tiny_config, tokenizer_dir,
                                                                           input_ids, monkeypatch):
    import panda.weights.export as export

    read = []

    def recording(*args, **kwargs):
        read.append(read_checkpoint(*args, **kwargs))
        return read[-1]

    monkeypatch.setattr(export, "read_checkpoint", recording)
    torch.manual_seed(0)
    module = PandaLM(config=tiny_config, monitor_throughput=False)
    module.chat_format = ChatFormat("roles", "panda_compat")  # what setup() takes from the training sources
    save_checkpoint(module, tmp_path / "last.ckpt")

    loaded = load_pretrained(tmp_path / "last.ckpt", tokenizer_dir, device="cpu")

    assert loaded.chat_format == ChatFormat("roles", "panda_compat")
    assert loaded.model.dtype == torch.float32 and not loaded.model.training and loaded.model.config.use_cache
    torch.testing.assert_close(logits(loaded.model, input_ids), logits(module.model.eval(), input_ids), rtol=0,
                               atol=0)
    # the checkpoint's (memory-mapped) tensors are the parameters: no second copy was made on the way
    assert loaded.model.get_input_embeddings().weight.data_ptr() == \
        read[0].state_dict["model.model.embed_tokens.weight"].data_ptr()


def test_hf_directory_export_and_lora_adapter_directory(tmp_path, tiny_llama_config, tokenizer_dir, input_ids):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_llama_config)
    base.save_pretrained(tmp_path / "base")
    module = PandaLM(pretrained=str(tmp_path / "base"), lora=LoraSettings(r=4), monitor_throughput=False)
    randomize_adapters(module)
    save_checkpoint(module, tmp_path / "lora.ckpt")
    export_checkpoint(tmp_path / "lora.ckpt", tmp_path / "adapters", tokenizer=str(tokenizer_dir),
                      lora_mode="adapters")
    export_checkpoint(tmp_path / "lora.ckpt", tmp_path / "merged", tokenizer=str(tokenizer_dir))
    expected = logits(module.model.eval(), input_ids)

    merged = load_pretrained(tmp_path / "merged", device="cpu")  # tokenizer and chat format from the export
    assert merged.chat_format == ChatFormat()
    torch.testing.assert_close(logits(merged.model, input_ids), expected)
    adapters = load_pretrained(tmp_path / "adapters", device="cpu")  # base from adapter_config.json
    torch.testing.assert_close(logits(adapters.model, input_ids), expected)
    explicit = load_pretrained(tmp_path / "base", tokenizer_dir, adapters=tmp_path / "adapters", device="cpu")
    torch.testing.assert_close(logits(explicit.model, input_ids), expected)
    lora_ckpt = load_pretrained(tmp_path / "lora.ckpt", tokenizer_dir, device="cpu")
    torch.testing.assert_close(logits(lora_ckpt.model, input_ids), expected)


def test_bad_paths_and_mismatched_tokenizers_are_one_line_user_errors(tmp_path, tiny_config, tokenizer_dir):
    with pytest.raises(UserError, match="nowhere does not exist: it is neither a Hugging Face") as missing:
        load_pretrained(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is of no known layout"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.ckpt: cannot read checkpoint"):
        load_pretrained(tmp_path / "junk.ckpt", tokenizer_dir)

    small = dict(tiny_config, vocab_size=100)
    save_checkpoint(PandaLM(config=small, monitor_throughput=False), tmp_path / "small.ckpt")
    with pytest.raises(UserError, match="small.ckpt has 100 vocabulary rows but tokenizer .* has 4000 tokens") as mismatch:
        load_pretrained(tmp_path / "small.ckpt", tokenizer_dir, device="cpu")
    assert "\n" not in str(mismatch.value)
    with pytest.raises(UserError, match="no tokenizer found"):
        load_pretrained(tmp_path / "small.ckpt", device="cpu")


def test_eval_loading_names_still_work(tmp_path, tiny_config, tokenizer_dir):
    from panda.eval.loading import encode, load_model, load_model_and_tokenizer

    save_checkpoint(PandaLM(config=tiny_config, monitor_throughput=False), tmp_path / "last.ckpt")
    model, tokenizer = load_model_and_tokenizer(tmp_path / "last.ckpt", tokenizer_dir)
    assert encode(tokenizer, "你好")[0] == tokenizer.bos_token_id
    assert load_model(tmp_path / "last.ckpt")[1] is None  # a config-built checkpoint names no tokenizer


@pytest.mark.slow
def test_deepspeed_zero_checkpoint_folder_loads(tmp_path, tiny_config, tokenizer_dir):
    from tests.weights.test_export import write_zero_checkpoint

    write_zero_checkpoint(tmp_path, tiny_config)
    loaded = load_pretrained(tmp_path / "zero", tokenizer_dir, device="cpu")
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    torch.testing.assert_close(logits(loaded.model, expected["input_ids"]), expected["logits"])
