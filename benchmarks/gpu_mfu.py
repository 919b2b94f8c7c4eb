"""Tokens/s and MFU of a LLaMA-7B-shaped bf16 training step with activation checkpointing on one GPU.

The step is what Panda-7B runs per GPU, minus the data-parallel communication: a ``LlamaForCausalLM`` with
LLaMA-7B's shape (random weights — throughput does not depend on them), ``--batch-size`` rows of ``--seq-length``
tokens, the SDPA attention kernel, non-reentrant activation checkpointing (the same call PandaLM makes), loss,
backward, AdamW. Weights, gradients and AdamW moments are bf16 here (~56 GB at 7B) so that one 80 GB GPU holds
them; DeepSpeed keeps fp32 master weights, which changes memory, not the FLOPs of the step.

MFU counts *model* FLOPs with :func:`panda.training.monitor.training_flops_per_token` (what the training monitor
logs): recomputation by activation checkpointing does not count, so MFU here is comparable with published
numbers. The peak is the GPU's dense bf16 figure: ``--peak-tflops`` if given, else 989 TFLOP/s for H100/H200
SXM (Lightning's table lists H200 with sparsity), else Lightning's ``get_available_flops``.

With ``--shape auto`` (default) the largest of 7b, 3b and 1b that fits is used. Without a GPU the script says
so and exits with status 0; ``--shape tiny --allow-cpu`` runs the same code on CPU as a smoke test.

    .venv/bin/python benchmarks/gpu_mfu.py [--shape auto|7b|3b|1b|tiny] [--batch-size 4] [--seq-length 2048]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# LLaMA-7B as published; 3b/1b: the same family scaled down (OpenLLaMA-3B's and TinyLlama-1.1B's widths).
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "3b": {"hidden_size": 3200, "intermediate_size": 8640, "num_hidden_layers": 26, "num_attention_heads": 32},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32},
    "tiny": {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4, "num_attention_heads": 4},
}
VOCAB = 32001  # LLaMA's 32000 + Panda's pad token
DENSE_BF16_SXM = 989.4e12  # H100 SXM and H200 SXM share the compute die


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for CPUs"
    name = torch.cuda.get_device_name(device).lower()
    if "h200" in name or ("h100" in name and "pcie" not in name and "nvl" not in name):
        return DENSE_BF16_SXM, f"dense bf16 of {name}"
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, torch.bfloat16), f"Lightning's table for {name}"


def build(shape: str, device: torch.device, seq_length: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=max(seq_length, 2048),
                         num_key_value_heads=SHAPES[shape]["num_attention_heads"], **SHAPES[shape])
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.config.use_cache = False
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.99), eps=1e-6,
                                  fused=device.type == "cuda")
    return model, optimizer


def step(model, optimizer, batch: torch.Tensor) -> None:
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(shape: str, device: torch.device, args) -> dict:
    from panda.training.monitor import training_flops_per_token

    model, optimizer = build(shape, device, args.seq_length)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = torch.randint(0, VOCAB, (args.batch_size, args.seq_length), device=device, generator=generator)
    for _ in range(args.warmup):
        step(model, optimizer, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(model, optimizer, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    embedding = model.get_input_embeddings().weight
    matmul_params = sum(p.numel() for p in model.parameters() if p is not embedding)
    config = model.config
    per_token = training_flops_per_token(num_params=matmul_params, num_trainable=matmul_params,
                                         num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                                         context=args.seq_length)
    tokens = args.batch_size * args.seq_length
    result = {"shape": shape, "params": sum(p.numel() for p in model.parameters()), "seconds_per_step": seconds,
              "tokens_per_s": tokens / seconds, "flops_per_s": per_token * tokens / seconds}
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="auto", choices=["auto", *SHAPES])
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step (Panda-7B: 4 per GPU)")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (only sensible with --shape tiny)")
    args = parser.parse_args()

    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
    elif args.allow_cpu:
        device = torch.device("cpu")
    else:
        print("gpu_mfu: no CUDA GPU visible; this benchmark needs one (try --shape tiny --allow-cpu for a smoke "
              "run of the code path on CPU).")
        return 0
    shapes = ["7b", "3b", "1b"] if args.shape == "auto" else [args.shape]
    for shape in shapes:
        try:
            result = measure(shape, device, args)
            break
        except torch.OutOfMemoryError:
            print(f"gpu_mfu: {shape} does not fit with batch {args.batch_size} × {args.seq_length}; trying smaller")
            gc.collect()
            torch.cuda.empty_cache()
    else:
        print("gpu_mfu: no shape fits; lower --batch-size")
        return 1
    peak, source = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; LLaMA-{result['shape']} shape, {result['params'] / 1e9:.2f}B parameters, bf16, "
          f"activation checkpointing, batch {args.batch_size} × {args.seq_length}")
    print(f"step: {result['seconds_per_step']:.3f} s; tokens/s: {result['tokens_per_s']:,.0f}; "
          f"model TFLOP/s: {result['flops_per_s'] / 1e12:.1f}")
    if peak:
        print(f"MFU: {result['flops_per_s'] / peak:.1%} (peak {peak / 1e12:.0f} TFLOP/s, {source})")
    else:
        print(f"MFU: not computed ({source}; pass --peak-tflops)")
    if "peak_memory_gb" in result:
        print(f"peak GPU memory: {result['peak_memory_gb']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
