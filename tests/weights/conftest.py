"""Helpers for the weight-tool tests: small weight directories written with the safetensors library itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_weights(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """Write ``tensors`` as a Hugging Face style sharded safetensors directory (index included when sharded)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        file_name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors[name].contiguous() for name in group}, str(directory / file_name),
                  metadata={"format": "pt"})
        weight_map.update({name: file_name for name in group})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory
