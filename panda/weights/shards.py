"""Weight directories read and written one tensor at a time, and outputs that appear only when complete.

A 7B model is 13 GB; delta tools that load it whole need a 30 GB machine for a job that is really ``for tensor:
read, combine, write``. So reading goes through ``safetensors.safe_open`` (or ``torch.load(mmap=True,
weights_only=True)`` for the ``pytorch_model*.bin`` shards of 2023-era checkpoints: nothing but tensors and plain
containers is ever unpickled), and writing goes through :class:`ShardWriter`, which lays out every shard from the
tensor names, dtypes and shapes *before* any data exists, writes each safetensors header up front and then streams
each tensor's bytes into place. Peak memory is therefore a few times the largest tensor, never a whole shard.

The safetensors layout written here is the documented one: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {"format": "pt"}}`` padded with spaces
to a multiple of 8, then the tensor bytes back to back in header order. The tests read every written file back
with ``safe_open`` and ``transformers``.

:func:`panda.io.atomic_directory` gives every tool the same promise: the output appears by one ``rename`` of a finished
temporary directory next to it; an error or Ctrl-C removes the temporary directory and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from panda.errors import UserError
from panda.io import atomic_directory  # noqa: F401 - the weight tools' one way to publish a folder

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class WeightFileError(UserError, ValueError):
    """A weight file that cannot be used; the message names the file (and the tensor, where one is at fault)."""


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class TensorInfo(PlannedTensor):
    """Where one tensor lives and what it is, known without reading its data."""

    file: Path


def parse_size(size: int | str) -> int:
    """``"2GB"``, ``"500MB"``, ``"64KiB"`` or a byte count → bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"shard size {size!r}: expected a byte count or a size like '2GB' or '500MB'")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** "_KMGT".index(unit.upper() or "_"))


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's bytes (dtype and shape are recorded next to the hash, not inside it)."""
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking that the file holds all the bytes it promises.

    (``safetensors.safe_open`` reads a header without checking the file's length, and huggingface_hub's
    ``parse_safetensors_file_metadata`` reads only from the hub: a truncated download is caught here.)
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WeightFileError(f"{path}: truncated safetensors shard ({size} bytes, no header); download it again")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise WeightFileError(f"{path}: truncated safetensors shard: the header alone should be {header_length} "
                                  f"bytes but the file has {size}; download it again")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WeightFileError(f"{path}: not a safetensors file (header is not JSON: {error})") from None
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    expected = 8 + header_length + data_end
    if size < expected:
        last = max((key for key in header if key != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
        raise WeightFileError(f"{path}: truncated safetensors shard: {size} of {expected} bytes present (tensor "
                              f"{last!r} and possibly others cut off); download it again")
    return header


def weight_files(directory: Path) -> list[Path]:
    """The weight shards of a Hugging Face model directory: safetensors if present, else ``pytorch_model*.bin``."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise WeightFileError(f"{index}: not a shard index (expected JSON with 'weight_map'): {error}") \
                    from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(file) for file in files if not file.is_file()]
            if missing:
                raise WeightFileError(f"{index} lists shards that do not exist: {', '.join(missing)}")
            return files
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise WeightFileError(f"{directory}: no weights found (expected *.safetensors or pytorch_model*.bin shards)")
    return files


class WeightReader:
    """Tensor-by-tensor read access to a weight directory (or a single weight file).

    Args:
        path: A Hugging Face model directory, a directory of shards, or one ``.safetensors``/``.bin`` file.
        files: Read exactly these shards instead of discovering them.
    """

    def __init__(self, path: str | Path, files: Iterable[Path] | None = None) -> None:
        self.path = Path(path)
        if files is None:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no such weight file or directory")
            files = weight_files(self.path) if self.path.is_dir() else [self.path]
        self.files = list(files)
        self.infos: dict[str, TensorInfo] = {}
        self._legacy: tuple[Path, dict[str, torch.Tensor]] | None = None
        for file in self.files:
            for info in self._scan(file):
                if info.name in self.infos:
                    raise WeightFileError(f"{file}: tensor {info.name!r} also appears in {self.infos[info.name].file}")
                self.infos[info.name] = info

    def _scan(self, file: Path) -> Iterator[TensorInfo]:
        if file.suffix == ".safetensors":
            header = read_safetensors_header(file)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                if entry["dtype"] not in SAFETENSORS_DTYPES:
                    raise WeightFileError(f"{file}: tensor {name!r} has unsupported dtype {entry['dtype']}")
                yield TensorInfo(name, SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), file)
        else:
            for name, tensor in self._load_pickle(file).items():
                yield TensorInfo(name, tensor.dtype, tuple(tensor.shape), file)

    def _load_pickle(self, file: Path) -> dict[str, torch.Tensor]:
        """A ``.bin`` shard memory-mapped (tensor data is read only when used), unpickled with weights_only."""
        try:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise WeightFileError(f"{file}: cannot read PyTorch weights (truncated or corrupt?): {error}") from None
            if self._legacy is None or self._legacy[0] != file:  # pre-zip format: no mmap, keep one shard loaded
                self._legacy = (file, torch.load(file, map_location="cpu", weights_only=True))
            state = self._legacy[1]
        except Exception as error:  # noqa: BLE001 - unpickling errors come in many types; all mean "unusable file"
            raise WeightFileError(f"{file}: cannot read PyTorch weights safely (weights_only=True): {error}") from None
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise WeightFileError(f"{file}: expected a flat dict of tensors (a state dict shard)")
        return state

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor.

        The file is opened for this tensor alone: a handle kept open keeps the whole shard memory-mapped, and every
        page read stays resident until it closes, so reading a shard through one handle costs the shard's size.
        """
        info = self.infos[name]
        try:
            if info.file.suffix != ".safetensors":
                return self._load_pickle(info.file)[name]
            from safetensors import safe_open

            with safe_open(str(info.file), framework="pt") as handle:
                return handle.get_tensor(name)
        except WeightFileError:
            raise
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightFileError(f"{info.file}: cannot read tensor {name!r}: {error}") from None


class ShardWriter:
    """Writes planned tensors, in plan order, into sharded safetensors files plus a Hugging Face index.

    Args:
        directory: Where the shards go (normally the temporary directory of :func:`atomic_directory`).
        plan: Every tensor to be written, in writing order.
        prefix: File stem: ``model`` gives ``model-00001-of-00003.safetensors`` and ``model.safetensors.index.json``
            (``model.safetensors`` when there is one shard), the names ``transformers`` loads.
        max_shard_size: Bytes (or ``"2GB"``) per shard; a larger single tensor gets a shard of its own.
        hash_files: Record each finished shard's sha256 in :attr:`file_sha256` (one more pass over every byte;
            off where nobody reads it).
    """

    def __init__(self, directory: Path, plan: list[PlannedTensor], *, prefix: str = "model",
                 max_shard_size: int | str = "2GB", hash_files: bool = True) -> None:
        # Shards are consecutive runs of the plan. huggingface_hub's split_state_dict_into_shards_factory moves
        # tensors larger than the limit to shards of their own out of order, which a writer that streams each
        # tensor as it is read (one open shard at a time) cannot follow; its size parser has no KiB/MiB either.
        limit = parse_size(max_shard_size)
        groups: list[list[PlannedTensor]] = [[]]
        size = 0
        for item in plan:
            if groups[-1] and size + item.nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += item.nbytes
        count = len(groups)
        names = [f"{prefix}.safetensors"] if count == 1 else [
            f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self.directory = Path(directory)
        self.prefix = prefix
        self.shards = list(zip(names, groups))
        self.file_sha256: dict[str, str] = {}
        self._hash_files = hash_files
        self._pending = iter([(file_name, item) for file_name, group in self.shards for item in group])
        self._handle = None
        self._hash = None
        self._file_name: str | None = None

    def _start_shard(self, file_name: str) -> None:
        self._finish_shard()
        group = dict(self.shards)[file_name]
        header, offset = {}, 0
        for item in group:
            header[item.name] = {"dtype": DTYPE_NAMES[item.dtype], "shape": list(item.shape),
                                 "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        header["__metadata__"] = {"format": "pt"}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        self._handle = (self.directory / file_name).open("wb")
        self._hash = hashlib.sha256() if self._hash_files else None
        self._file_name = file_name
        self._emit(struct.pack("<Q", len(encoded)) + encoded)

    def _emit(self, data) -> None:
        self._handle.write(data)
        if self._hash is not None:
            self._hash.update(data)

    def _finish_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            if self._hash is not None:
                self.file_sha256[self._file_name] = self._hash.hexdigest()
            self._handle = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next planned tensor; its name, dtype and shape must match the plan."""
        try:
            file_name, item = next(self._pending)
        except StopIteration:
            raise ValueError(f"tensor {name!r} was not in the write plan (all planned tensors are written)") from None
        if (name, tensor.dtype, tuple(tensor.shape)) != (item.name, item.dtype, item.shape):
            raise ValueError(f"writing {file_name}: got tensor {name!r} {tensor.dtype} {tuple(tensor.shape)}, the plan "
                             f"expects {item.name!r} {item.dtype} {item.shape}")
        if file_name != self._file_name:
            self._start_shard(file_name)
        self._emit(tensor_bytes(tensor))

    def close(self) -> None:
        """Finish the last shard and write the index; refuses if planned tensors were never written."""
        left = [item.name for _, item in self._pending]
        if left:
            raise ValueError(f"{len(left)} planned tensors were never written, first {left[0]!r}")
        self._finish_shard()
        if len(self.shards) > 1:
            weight_map = {item.name: file_name for file_name, group in self.shards for item in group}
            total = sum(item.nbytes for _, group in self.shards for item in group)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / f"{self.prefix}.safetensors.index.json").write_text(
                json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.abort()  # after close() a no-op; after an error, closes the shard being written


NON_WEIGHT_FILES = ("config.json", "generation_config.json", "tokenizer.model", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def copy_model_files(source: Path, destination: Path) -> list[str]:
    """Copy a model directory's configuration and tokenizer files (not its weights); returns the names copied."""
    copied = []
    for name in NON_WEIGHT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)
            copied.append(name)
    return copied
