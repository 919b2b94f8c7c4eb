import pytest
import torch


@pytest.fixture()
def model_dir(tmp_path, tiny_llama_config, tokenizer):
    """A tiny random LLaMA saved as a Hugging Face directory with the test tokenizer (as an export is)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"
