"""The model side of Panda: the LightningModule around ``LlamaForCausalLM``, LoRA/embedding-only training."""

from panda.model.lora import LoraSettings
from panda.model.module import PandaLM

__all__ = ["LoraSettings", "PandaLM"]
