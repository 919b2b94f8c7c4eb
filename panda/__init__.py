"""Panda: continual pretraining and instruction tuning of LLaMA on Chinese corpora."""
