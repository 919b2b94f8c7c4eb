"""Peak memory and time of ``delta-apply`` (and ``delta-make``) against the size of the model.

Builds a LLaMA of a few hundred MB from a ``LlamaConfig`` (bf16, real LLaMA vocabulary of 32000 rows, target
resized to 32001 rows like Panda's), writes base and target as sharded safetensors, then runs ``make_delta`` and
``apply_delta`` each in a fresh subprocess and reads the subprocess's peak RSS (``VmHWM``). The interpreter with
torch imported already holds ~200 MB whatever the model, so the table shows both the raw peak and the peak above
that baseline; the goal (≤ 0.3× the model) is about the latter — what the tool itself holds.

    .venv/bin/python benchmarks/delta_memory.py [--layers 24] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def write_model(directory: Path, config, *, seed: int, extra_rows: int, like: Path | None = None) -> int:
    """Random bf16 weights for ``config`` (or ``like``'s weights plus noise), streamed to sharded safetensors."""
    import torch
    from transformers import LlamaForCausalLM

    from panda.weights.shards import PlannedTensor, ShardWriter, WeightReader

    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        shapes[name] = (shapes[name][0] + extra_rows, shapes[name][1])
    directory.mkdir(parents=True)
    plan = [PlannedTensor(name, torch.bfloat16, shape) for name, shape in shapes.items()]
    writer = ShardWriter(directory, plan, max_shard_size="200MB")
    generator = torch.Generator().manual_seed(seed)
    base = WeightReader(like) if like else None
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator).mul_(0.02)
        if base is not None and base.infos[name].shape == shape:
            noise.mul_(0.05).add_(base.get(name).float())
        writer.write(name, noise.to(torch.bfloat16))
    writer.close()
    config.save_pretrained(directory)
    return sum(math.prod(shape) * 2 for shape in shapes.values())


def measure(command: str, *paths: str) -> dict:
    """Run one tool in this script's child mode and return its timings and memory."""
    output = subprocess.run([sys.executable, __file__, "--child", command, *paths], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(command: str, paths: list[str]) -> None:
    from panda.weights.delta import apply_delta, make_delta

    baseline = status_mb("VmRSS")
    start = time.perf_counter()
    (make_delta if command == "make" else apply_delta)(*paths, max_shard_size="200MB")
    seconds = time.perf_counter() - start
    print(json.dumps({"baseline_mb": baseline, "peak_mb": status_mb("VmHWM"), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1:])

    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, dtype="bfloat16")
    with tempfile.TemporaryDirectory(prefix="delta-memory-", dir=REPO / "benchmarks") as scratch:
        root = Path(scratch)
        size = write_model(root / "base", config, seed=0, extra_rows=0)
        target_size = write_model(root / "target", config, seed=1, extra_rows=1, like=root / "base")
        largest = args.hidden * 32001 * 2
        rows = [("delta-make", measure("make", str(root / "base"), str(root / "target"), str(root / "delta"))),
                ("delta-apply", measure("apply", str(root / "base"), str(root / "delta"), str(root / "rebuilt")))]
        same = all((root / "rebuilt" / f.name).read_bytes() == f.read_bytes()
                   for f in sorted((root / "target").glob("*.safetensors")))

    mb = 1e6 / 2**20
    print(f"model: LlamaConfig hidden {args.hidden}, {args.layers} layers, vocab 32000→32001, bf16: base "
          f"{size / 1e6:.0f} MB, target {target_size / 1e6:.0f} MB, largest tensor {largest / 1e6:.0f} MB")
    print(f"{'command':<12} {'time s':>7} {'MB/s':>6} {'peak RSS MB':>12} {'baseline MB':>12} {'peak-base MB':>13} "
          f"{'RSS/model':>10} {'(peak-base)/model':>18}")
    for name, row in rows:
        model_mb = target_size / 1e6 / mb
        extra = row["peak_mb"] - row["baseline_mb"]
        print(f"{name:<12} {row['seconds']:>7.1f} {target_size / 1e6 / row['seconds']:>6.0f} {row['peak_mb']:>12.0f} "
              f"{row['baseline_mb']:>12.0f} {extra:>13.0f} {row['peak_mb'] / model_mb:>10.2f} "
              f"{extra / model_mb:>18.2f}")
    print(f"rebuilt shards byte-identical to the target's: {same}")


if __name__ == "__main__":
    main()
