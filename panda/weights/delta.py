"""Weight deltas: release a model trained from LLaMA without releasing LLaMA, and rebuild it bit for bit.

The LLaMA licence forbids redistributing its weights, so the reference project released ``target - base`` and its
users added it to their own LLaMA copy. Most of its issue tracker was about that step: a 32000-row base against a
32001-row delta, a delta loaded as if it were a model, no way to tell a wrong base from a bug. Here:

* **Encoding.** A tensor present in both models with the same shape and dtype is stored as the XOR of the two
  tensors' bit patterns (``int16`` views for bf16/fp16, ``int32`` for fp32, ``int64`` for fp64). XOR is its own
  inverse, so ``base ^ (target ^ base) == target`` holds for every bit pattern (inf, nan payloads, -0.0,
  subnormals, the largest finite values) and the rebuilt model is *bit-identical* to the released one. Float
  subtraction is not invertible (``(t - b) + b != t`` after rounding, and ``inf - inf`` is nan), which is why the
  reference's deltas could only rebuild an approximation. Close values share sign, exponent and high mantissa
  bits, so the XOR is mostly zero bits and compresses well. Tensors whose shape or dtype differ from the base's
  (the resized ``embed_tokens``/``lm_head``) or that the base lacks are stored whole, as the reference did.
* **Manifest** (``delta_manifest.json``): per tensor its mode, dtype, shape and the sha256 of the base tensor, the
  delta tensor and the target tensor, plus fingerprints of the whole base and target. ``apply`` checks the base's
  names, shapes and dtypes before reading any data (this catches the 32000/32001 mix-up with a clear message),
  checks every base and delta tensor's hash as it streams, and checks every rebuilt tensor against the target
  hash. Any failure leaves no output behind (:func:`~panda.weights.shards.atomic_directory`).
* **Not loadable by mistake.** Delta shards are named ``delta-*.safetensors`` and the target's config and tokenizer
  sit in ``target_files/``, so ``from_pretrained`` on a delta directory fails instead of loading noise.
* **Reference layout.** A directory without a manifest is read as the reference's release: ``pytorch_model*.bin``
  (or safetensors) shards of ``target - base`` in floating point, ``embed_tokens``/``lm_head`` whole. It is applied
  by float addition (what the reference's own script did) and cannot be verified, which a warning says.

Both directions stream tensor by tensor (see :mod:`panda.weights.shards`): peak memory is one to three times the
largest tensor, whatever the model size (``benchmarks/delta_memory.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from panda.errors import UserError
from panda.progress import progress
from panda.weights.shards import (
    DTYPE_NAMES, SAFETENSORS_DTYPES, PlannedTensor, ShardWriter, WeightFileError, WeightReader, atomic_directory,
    copy_model_files, tensor_sha256,
)

MANIFEST_NAME = "delta_manifest.json"
TARGET_FILES_DIR = "target_files"
FORMAT = "panda-weight-delta"
ENCODING = "xor of bit patterns (int16 views for bf16/fp16, int32 for fp32, int64 for fp64); others stored whole"
BIT_VIEWS: dict[torch.dtype, torch.dtype] = {
    torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64,
}
REFERENCE_WHOLE_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


class WrongBaseError(UserError, ValueError):
    """The base weights given to ``apply`` are not the ones the delta was made from."""


def xor_bits(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first ^ second`` on the bit patterns of two same-dtype float tensors, as an integer tensor."""
    view = BIT_VIEWS[first.dtype]
    return torch.bitwise_xor(first.view(view), second.view(view))


def fingerprint(hashes: dict[str, str]) -> str:
    """One sha256 naming a whole set of tensors: the hash of the sorted ``name sha256`` lines."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def make_delta(base: str | Path, target: str | Path, output: str | Path, *, max_shard_size: str = "2GB",
               overwrite: bool = False) -> Path:
    """Write the delta that turns ``base`` into ``target``, with its manifest, into ``output``.

    Args:
        base: The public base model directory (e.g. a LLaMA conversion in Hugging Face layout).
        target: The trained model directory to release.
        output: The delta directory to create (appears only when complete).
        max_shard_size: Largest delta shard, e.g. ``2GB``.
        overwrite: Replace an existing ``output``.
    """
    base_reader, target_reader = WeightReader(base), WeightReader(target)
    entries: dict[str, dict] = {}
    plan = []
    for name, info in target_reader.infos.items():
        entry = {"dtype": DTYPE_NAMES[info.dtype], "shape": list(info.shape)}
        base_info = base_reader.infos.get(name)
        if base_info is None:
            entry.update(mode="whole", reason="not in base")
        elif base_info.shape != info.shape:
            entry.update(mode="whole", reason=f"base shape {list(base_info.shape)}")
        elif base_info.dtype != info.dtype or info.dtype not in BIT_VIEWS:
            entry.update(mode="whole", reason=f"base dtype {DTYPE_NAMES[base_info.dtype]}")
        else:
            entry.update(mode="xor")
        entries[name] = entry
        plan.append(PlannedTensor(name, BIT_VIEWS[info.dtype] if entry["mode"] == "xor" else info.dtype, info.shape))

    with atomic_directory(output, overwrite=overwrite) as staging:
        with ShardWriter(staging, plan, prefix="delta", max_shard_size=max_shard_size) as writer:
            for name, entry in progress(entries.items(), desc="delta-make", total=len(entries), unit="tensor"):
                target_tensor = target_reader.get(name)
                entry["target_sha256"] = tensor_sha256(target_tensor)
                if entry["mode"] == "xor":
                    base_tensor = base_reader.get(name)
                    entry["base_sha256"] = tensor_sha256(base_tensor)
                    stored = xor_bits(target_tensor, base_tensor)
                    del base_tensor
                    entry["delta_sha256"] = tensor_sha256(stored)
                else:  # stored whole: the delta tensor is the target tensor, already hashed
                    stored = target_tensor
                    entry["delta_sha256"] = entry["target_sha256"]
                writer.write(name, stored)
                del stored, target_tensor
            writer.close()
        (staging / TARGET_FILES_DIR).mkdir()
        copy_model_files(Path(target), staging / TARGET_FILES_DIR)
        manifest = {
            "format": FORMAT, "version": 1, "encoding": ENCODING,
            "base_fingerprint": fingerprint({n: e["base_sha256"] for n, e in entries.items() if e["mode"] == "xor"}),
            "target_fingerprint": fingerprint({n: e["target_sha256"] for n, e in entries.items()}),
            "files": writer.file_sha256,
            "base_only": sorted(set(base_reader.infos) - set(entries)),
            "tensors": entries,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return Path(output)


def apply_delta(base: str | Path, delta: str | Path, output: str | Path, *, max_shard_size: str = "2GB",
                overwrite: bool = False) -> Path:
    """Rebuild the target model from ``base`` and ``delta`` into ``output`` (a Hugging Face directory).

    A delta with ``delta_manifest.json`` is checked end to end (see module docstring); a directory without one is
    taken as the reference project's float ``target - base`` release.

    Args:
        base: Your copy of the base model (Hugging Face directory; safetensors or ``pytorch_model*.bin`` shards).
        delta: The delta directory.
        output: The model directory to create (appears only when complete and verified).
        max_shard_size: Largest output shard, e.g. ``2GB``.
        overwrite: Replace an existing ``output``.
    """
    delta = Path(delta)
    if (delta / MANIFEST_NAME).is_file():
        return _apply_verified(Path(base), delta, Path(output), max_shard_size, overwrite)
    return _apply_reference(Path(base), delta, Path(output), max_shard_size, overwrite)


def _load_manifest(delta: Path) -> dict:
    path = delta / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != 1:
        raise WeightFileError(f"{path}: expected format {FORMAT!r} version 1, found "
                              f"{manifest.get('format')!r} version {manifest.get('version')!r}")
    return manifest


def _check_base_layout(base: WeightReader, entries: dict[str, dict], manifest_path: Path) -> None:
    """Compare names, shapes and dtypes before reading data: the 32000-vs-32001 mistake fails here, fast."""
    problems = []
    for name, entry in entries.items():
        if entry["mode"] != "xor":
            continue
        info = base.infos.get(name)
        expected = (SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        if info is None:
            problems.append(f"tensor {name!r} is missing")
        elif (info.dtype, info.shape) != expected:
            problems.append(f"tensor {name!r} in {info.file.name} is {DTYPE_NAMES[info.dtype]} {list(info.shape)}, "
                            f"expected {entry['dtype']} {entry['shape']}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WrongBaseError(f"base {base.path} does not match the delta's manifest {manifest_path}: "
                             + "; ".join(problems[:5]) + more)


def _apply_verified(base: Path, delta: Path, output: Path, max_shard_size: str, overwrite: bool) -> Path:
    manifest_path = delta / MANIFEST_NAME
    manifest = _load_manifest(delta)
    entries = manifest["tensors"]
    missing = [name for name in manifest["files"] if not (delta / name).is_file()]
    if missing:
        raise WeightFileError(f"{delta}: delta shards listed in {manifest_path.name} are missing: {', '.join(missing)}")
    delta_reader = WeightReader(delta, files=[delta / name for name in manifest["files"]])
    base_reader = WeightReader(base)
    _check_base_layout(base_reader, entries, manifest_path)
    plan = [PlannedTensor(name, SAFETENSORS_DTYPES[e["dtype"]], tuple(e["shape"])) for name, e in entries.items()]

    with atomic_directory(output, overwrite=overwrite) as staging:
        with ShardWriter(staging, plan, prefix="model", max_shard_size=max_shard_size,
                         hash_files=False) as writer:
            for name, entry in progress(entries.items(), desc="delta-apply", total=len(entries), unit="tensor"):
                if name not in delta_reader:
                    raise WeightFileError(f"{delta}: tensor {name!r} listed in {manifest_path.name} is in no shard")
                stored = delta_reader.get(name)
                stored_sha256 = tensor_sha256(stored)
                if stored_sha256 != entry["delta_sha256"]:
                    raise WeightFileError(f"{delta_reader.infos[name].file}: tensor {name!r} does not match its "
                                          f"sha256 in {manifest_path.name}; the delta is corrupt, download it again")
                if entry["mode"] == "xor":
                    base_tensor = base_reader.get(name)
                    digest = tensor_sha256(base_tensor)
                    if digest != entry["base_sha256"]:
                        raise WrongBaseError(
                            f"{base_reader.infos[name].file}: tensor {name!r} is not the one this delta was made from "
                            f"(sha256 {digest[:16]}…, {manifest_path} expects {entry['base_sha256'][:16]}…); "
                            f"apply the delta to the exact base weights it names")
                    dtype = SAFETENSORS_DTYPES[entry["dtype"]]
                    stored.bitwise_xor_(base_tensor.view(stored.dtype))
                    del base_tensor
                    stored = stored.view(dtype)
                    stored_sha256 = tensor_sha256(stored)
                if stored_sha256 != entry["target_sha256"]:  # a whole tensor's bytes were hashed just above
                    raise WeightFileError(f"{delta}: rebuilt tensor {name!r} does not match the target sha256 in "
                                          f"{manifest_path.name}")
                writer.write(name, stored)
                del stored
            writer.close()
        if (delta / TARGET_FILES_DIR).is_dir():
            copy_model_files(delta / TARGET_FILES_DIR, staging)
    return output


def _apply_reference(base: Path, delta: Path, output: Path, max_shard_size: str, overwrite: bool) -> Path:
    warnings.warn(f"{delta} has no {MANIFEST_NAME}: applying it as a reference-style float delta (target - base); "
                  f"the result cannot be verified against checksums", stacklevel=3)
    delta_reader, base_reader = WeightReader(delta), WeightReader(base)
    whole = {name for name in delta_reader if name.endswith(REFERENCE_WHOLE_SUFFIXES) or name not in base_reader}
    problems = [f"tensor {name!r} in {base_reader.infos[name].file.name} has shape "
                f"{list(base_reader.infos[name].shape)}, the delta's is {list(info.shape)}"
                for name, info in delta_reader.infos.items()
                if name not in whole and base_reader.infos[name].shape != info.shape]
    missing = [name for name in delta_reader if name in whole and not name.endswith(REFERENCE_WHOLE_SUFFIXES)]
    if missing:
        problems.append(f"tensors missing from the base: {', '.join(missing[:5])}")
    if problems:
        raise WrongBaseError(f"base {base} does not fit the delta {delta}: " + "; ".join(problems[:5]))
    plan = [PlannedTensor(name, info.dtype, info.shape) for name, info in delta_reader.infos.items()]

    with atomic_directory(output, overwrite=overwrite) as staging:
        with ShardWriter(staging, plan, prefix="model", max_shard_size=max_shard_size,
                         hash_files=False) as writer:
            for name in progress(delta_reader, desc="delta-apply", total=len(plan), unit="tensor"):
                stored = delta_reader.get(name)
                if name not in whole:
                    stored = (stored.float() + base_reader.get(name).float()).to(stored.dtype)
                writer.write(name, stored)
                del stored
            writer.close()
        copy_model_files(delta, staging)
    return output

