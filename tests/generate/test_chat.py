import io

import pytest
import torch

from panda.generate.chat import main


def test_chat_driven_through_stdin(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n\n今天天气怎么样？\n/reset\n谢谢\n/exit\n不会被读到\n"))
    assert main([str(model_dir), "--max_new_tokens", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"panda chat: {model_dir} (reference format, 512-token context)")
    assert len(out) == 5 and out[3] == "[new conversation]"  # banner, two replies, reset, one reply


@pytest.fixture()
def short_model_dir(tmp_path, tiny_llama_config, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tiny_llama_config.max_position_embeddings = 48
    AutoModelForCausalLM.from_config(tiny_llama_config).save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    return tmp_path / "short"


def test_history_is_trimmed_to_the_context(short_model_dir, monkeypatch, capsys):
    turns = ["今天的天气很好，我们去公园散步吧。"] * 4 + ["中国" * 200]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(turns) + "\n"))
    assert main([str(short_model_dir), "--max_new_tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "[dropped the 1 oldest turn to fit the 48-token context]" in out
    assert "but the model's context is 48 (max_position_embeddings); shorten it]" in out
