import json
import warnings

import pytest
import torch

from panda.weights.delta import MANIFEST_NAME, WrongBaseError, apply_delta, make_delta
from panda.weights.shards import WeightFileError, WeightReader
from tests.weights.conftest import write_weights

BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def extreme_values(dtype: torch.dtype) -> torch.Tensor:
    """inf, -inf, two nan payloads, max, min, smallest normal, smallest subnormals, ±0."""
    info = torch.finfo(dtype)
    view = BITS[dtype]
    from_bits = lambda bits: torch.tensor(bits, dtype=view).view(dtype)  # noqa: E731
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), info.max, info.min, info.tiny, 0.0, -0.0],
                           dtype=dtype)
    payload_nan = from_bits([0x7FC1 if view == torch.int16 else 0x7FC00001, -1])  # quiet nan with payload; 0xFFFF..
    subnormals = from_bits([1, 2, -32767 if view == torch.int16 else -(2**31) + 1])  # tiny ±subnormals
    return torch.cat([special, payload_nan, subnormals])


def model_pair(dtype: torch.dtype):
    """A base and a trained target: same-shape tensors perturbed, embed/lm_head resized 32→33 rows, extremes."""
    generator = torch.Generator().manual_seed(0)
    base = {
        "model.embed_tokens.weight": torch.randn(32, 16, generator=generator).to(dtype),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=generator).to(dtype),
        "model.layers.0.mlp.up_proj.weight": torch.randn(24, 16, generator=generator).to(dtype),
        "model.norm.weight": torch.ones(16, dtype=dtype),
        "lm_head.weight": torch.randn(32, 16, generator=generator).to(dtype),
    }
    target = {name: (t.float() + 0.01 * torch.randn(t.shape, generator=generator)).to(dtype)
              for name, t in base.items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        target[name] = torch.cat([target[name], torch.randn(1, 16, generator=generator).to(dtype)])
    extremes = extreme_values(dtype)
    target["model.layers.0.mlp.up_proj.weight"].view(-1)[: len(extremes)] = extremes
    base["model.layers.0.mlp.up_proj.weight"].view(-1)[5 : 5 + len(extremes)] = extremes.flip(0)
    target["model.layers.0.self_attn.q_proj.weight"].view(-1)[: len(extremes)] = extremes
    base["model.layers.0.self_attn.q_proj.weight"].view(-1)[: len(extremes)] = extremes  # identical extremes
    return base, target


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_is_bit_exact_including_extreme_values(tmp_path, dtype):
    base, target = model_pair(dtype)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target, shards=3)
    (tmp_path / "target" / "config.json").write_text('{"model_type": "llama"}')

    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta", max_shard_size="1KB")
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "rebuilt", max_shard_size="1KB")

    rebuilt = WeightReader(tmp_path / "rebuilt")
    assert sorted(rebuilt) == sorted(target)
    for name, expected in target.items():
        got = rebuilt.get(name)
        assert got.dtype == dtype and got.shape == expected.shape
        assert torch.equal(got.view(BITS[dtype]), expected.view(BITS[dtype])), name
    assert len(list((tmp_path / "rebuilt").glob("model-*.safetensors"))) > 1
    assert (tmp_path / "rebuilt" / "config.json").read_text() == '{"model_type": "llama"}'

    manifest = json.loads((tmp_path / "delta" / MANIFEST_NAME).read_text())
    modes = {name: entry["mode"] for name, entry in manifest["tensors"].items()}
    assert modes == {"model.embed_tokens.weight": "whole", "model.layers.0.self_attn.q_proj.weight": "xor",
                     "model.layers.0.mlp.up_proj.weight": "xor", "model.norm.weight": "xor", "lm_head.weight": "whole"}
    # The delta is not a model: nothing in it is named like Hugging Face weights.
    assert not list((tmp_path / "delta").glob("model*"))
    assert (tmp_path / "delta" / "target_files" / "config.json").exists()


def test_wrong_base_is_refused_and_leaves_no_output(tmp_path):
    base, target = model_pair(torch.bfloat16)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target)
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    base["model.norm.weight"][3] = 1.5  # one changed value in the last tensor read
    write_weights(tmp_path / "other_base", base)

    with pytest.raises(WrongBaseError, match=r"model-0000\d-of-00002.safetensors: tensor 'model.norm.weight'"):
        apply_delta(tmp_path / "other_base", tmp_path / "delta", tmp_path / "out" / "rebuilt")
    assert list((tmp_path / "out").iterdir()) == []


def test_base_with_other_shape_is_refused_before_reading(tmp_path):
    base, target = model_pair(torch.float16)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target)
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    base["model.layers.0.mlp.up_proj.weight"] = base["model.layers.0.mlp.up_proj.weight"][:20]
    write_weights(tmp_path / "short_base", base)

    with pytest.raises(WrongBaseError, match=r"'model.layers.0.mlp.up_proj.weight' .* F16 \[20, 16\], expected "
                                             r"F16 \[24, 16\]"):
        apply_delta(tmp_path / "short_base", tmp_path / "delta", tmp_path / "rebuilt")
    assert not (tmp_path / "rebuilt").exists()


@pytest.mark.parametrize("which", ["delta", "base"])
def test_truncated_shard_is_refused_naming_the_file(tmp_path, which):
    base, target = model_pair(torch.float32)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target)
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta", max_shard_size="2KB")
    shard = sorted((tmp_path / which).glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])

    with pytest.raises(WeightFileError, match=rf"{shard}: truncated safetensors shard"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "rebuilt")
    assert not (tmp_path / "rebuilt").exists()


def test_corrupt_delta_tensor_is_named(tmp_path):
    base, target = model_pair(torch.float32)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target)
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    shard = tmp_path / "delta" / "delta.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to the last tensor written: the target's last one, model.norm.weight
    shard.write_bytes(bytes(data))

    with pytest.raises(WeightFileError, match=r"delta.safetensors: tensor 'model.norm.weight' does not match its sha"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "rebuilt")
    assert not (tmp_path / "rebuilt").exists()


def test_reference_layout_delta_is_applied(tmp_path, tiny_llama_config):
    """The reference released float ``target - base`` as pytorch_model-*.bin with whole 32001-row embeddings."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    vocab_size = tiny_llama_config.vocab_size
    base_model = LlamaForCausalLM(tiny_llama_config)
    base_model.save_pretrained(tmp_path / "base")
    target_model = LlamaForCausalLM(tiny_llama_config.__class__(**tiny_llama_config.to_dict()))
    target_model.resize_token_embeddings(vocab_size + 1, mean_resizing=False)  # + <pad>, as the reference did
    base_state, target_state = base_model.state_dict(), target_model.state_dict()
    delta = {name: tensor.clone() if name.endswith(("embed_tokens.weight", "lm_head.weight"))
             else tensor - base_state[name] for name, tensor in target_state.items()}
    reference = tmp_path / "reference_delta"
    reference.mkdir()
    names = list(delta)
    weight_map = {}
    for i, group in enumerate([names[: len(names) // 2], names[len(names) // 2 :]]):
        file_name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({name: delta[name] for name in group}, reference / file_name)
        weight_map.update(dict.fromkeys(group, file_name))
    (reference / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    target_model.config.save_pretrained(reference)

    with pytest.warns(UserWarning, match="no delta_manifest.json"):
        apply_delta(tmp_path / "base", reference, tmp_path / "rebuilt")

    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "rebuilt")
    assert rebuilt.config.vocab_size == vocab_size + 1
    for name, tensor in rebuilt.state_dict().items():
        torch.testing.assert_close(tensor, target_state[name], rtol=0, atol=1e-6, msg=name)


def test_make_and_apply_on_a_saved_hf_model_loads_with_transformers(tmp_path, tiny_llama_config):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    target = LlamaForCausalLM(tiny_llama_config).to(torch.bfloat16)
    target.save_pretrained(tmp_path / "target")
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "rebuilt")
    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "rebuilt", dtype=torch.bfloat16)
    for name, tensor in target.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name].view(torch.int16), tensor.view(torch.int16)), name


def test_base_in_pytorch_bin_shards_is_accepted(tmp_path):
    """Hashes cover tensor bytes, not files: a 2023-style pytorch_model-*.bin copy of the base is the same base."""
    base, target = model_pair(torch.bfloat16)
    write_weights(tmp_path / "base", base)
    write_weights(tmp_path / "target", target)
    make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    (tmp_path / "base_bin").mkdir()
    torch.save(base, tmp_path / "base_bin" / "pytorch_model.bin")

    apply_delta(tmp_path / "base_bin", tmp_path / "delta", tmp_path / "rebuilt")

    rebuilt = WeightReader(tmp_path / "rebuilt")
    assert all(torch.equal(rebuilt.get(n).view(torch.int16), t.view(torch.int16)) for n, t in target.items())
