import json

import pytest
import torch
from safetensors.torch import load_file

from panda.weights.shards import (
    PlannedTensor, ShardWriter, WeightFileError, WeightReader, atomic_directory, parse_size, tensor_sha256,
)


def test_atomic_directory_leaves_nothing_after_ctrl_c_and_replaces_only_when_complete(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "model-00001-of-00002.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(tmp_path / "out") as staging:
        (staging / "config.json").write_text("1")
    with pytest.raises(FileExistsError, match="out already exists"):
        with atomic_directory(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out", overwrite=True) as staging:
            (staging / "config.json").write_text("2")
            raise RuntimeError("disk full")
    assert (tmp_path / "out" / "config.json").read_text() == "1"
    with atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "config.json").write_text("3")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "config.json").read_text() == "3"


def test_streamed_shards_are_standard_safetensors(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(7, dtype=torch.int64),
               "c": torch.ones(5, dtype=torch.bfloat16), "d": torch.zeros(0, 4, dtype=torch.float16)}
    plan = [PlannedTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    writer = ShardWriter(tmp_path, plan, max_shard_size=24)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                                   "c": "model-00002-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}
    assert index["metadata"]["total_size"] == 24 + 8 + 10
    loaded = {}
    for file_name in set(index["weight_map"].values()):
        loaded |= load_file(tmp_path / file_name)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
        assert tensor_sha256(WeightReader(tmp_path).get(name)) == tensor_sha256(tensor)


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    plan = [PlannedTensor("a", torch.float32, (2,)), PlannedTensor("b", torch.float32, (2,))]
    with pytest.raises(ValueError, match=r"got tensor 'b' .* the plan expects 'a'"):
        ShardWriter(tmp_path, plan).write("b", torch.zeros(2))
    with pytest.raises(ValueError, match=r"got tensor 'a' torch.float64 \(2,\), the plan expects 'a' torch.float32"):
        ShardWriter(tmp_path, plan).write("a", torch.zeros(2, dtype=torch.float64))
    writer = ShardWriter(tmp_path, plan)
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 planned tensors were never written, first 'b'"):
        writer.close()
    writer.abort()


def test_truncated_pytorch_shard_is_refused_naming_the_file(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "pytorch_model.bin").write_bytes((tmp_path / "pytorch_model.bin").read_bytes()[:-600])
    with pytest.raises(WeightFileError, match=r"pytorch_model.bin: cannot read PyTorch weights"):
        WeightReader(tmp_path)


def test_pickled_code_in_a_weight_shard_is_never_run(tmp_path):
    torch.save({"w": torch.ones(2), "payload": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightFileError, match=r"pytorch_model.bin: cannot read PyTorch weights safely"):
        WeightReader(tmp_path)


def test_parse_size():
    assert [parse_size(s) for s in ("2GB", "500MB", "64KiB", "10", 7)] == [2 * 10**9, 5 * 10**8, 65536, 10, 7]
    with pytest.raises(ValueError, match="shard size 'big'"):
        parse_size("big")
