"""Tokens/s and MFU of a LLaMA-7B-shaped bf16 training step with activation checkpointing on one GPU, per attention path.

The step is what Panda-7B runs per GPU, minus the data-parallel communication: a ``LlamaForCausalLM`` with
LLaMA-7B's shape (random weights — throughput does not depend on them), ``--batch-size`` packed rows of
``--seq-length`` tokens (documents of the demo mix's length profile: mostly ≈460-token articles, many short
instructions), non-reentrant activation checkpointing (the same call PandaLM makes), PandaLM's chunked loss,
backward, AdamW. Each attention path of :mod:`panda.model.attention` runs on the same rows: ``causal`` (plain causal
SDPA over whole rows — documents leak, the floor), ``sdpa`` (dense document mask), ``document_sdpa``, ``varlen``
(PyTorch's flash varlen kernel), ``flash_attention_2`` (only if flash-attn is installed) and ``flex_attention``
(compiled on first use; its compile time is in the warm-up). Weights, gradients and AdamW moments are bf16 here (~56 GB at 7B) so that one 80 GB GPU holds
them; DeepSpeed keeps fp32 master weights, which changes memory, not the FLOPs of the step.

MFU counts *model* FLOPs with :func:`panda.training.monitor.training_flops_per_token` (what the training monitor
logs): recomputation by activation checkpointing does not count, so MFU here is comparable with published
numbers. The peak is the GPU's dense bf16 figure: ``--peak-tflops`` if given, else 989 TFLOP/s for H100/H200
SXM (Lightning's table lists H200 with sparsity), else Lightning's ``get_available_flops``.

With ``--shape auto`` (default) the largest of 7b, 3b and 1b that fits is used. Without a GPU the script says
so and exits with status 0; ``--shape tiny --allow-cpu`` runs the same code on CPU as a smoke test.

    .venv/bin/python benchmarks/gpu_mfu.py [--shape auto|7b|3b|1b|tiny] [--batch-size 4] [--seq-length 2048]
        [--paths causal sdpa document_sdpa varlen flash_attention_2 flex_attention]       (≈ 3 min on an H100)
"""

from __future__ import annotations

import argparse
import gc
import os
import random
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
    import panda.model.attention  # noqa: F401 (registers the document paths)
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


def packed_rows(batch_size: int, seq_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows filled with documents of the demo mix's length profile; ``position_ids`` restart per document."""
    rng = random.Random(0)
    lengths, shares = [460, 46, 65, 109, 20], [0.6, 0.12, 0.09, 0.1, 0.02]  # tokens per document, share of rows
    positions = []
    for _ in range(batch_size):
        row: list[int] = []
        while len(row) < seq_length:
            n = int(rng.choices(lengths, shares)[0] * rng.uniform(0.5, 1.5))
            row.extend(range(min(n, seq_length - len(row))))
        positions.append(row)
    position_ids = torch.tensor(positions, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (batch_size, seq_length), device=device, generator=generator)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone()}


def step(model, optimizer, batch: dict[str, torch.Tensor], path: str) -> None:
    from panda.model.attention import packed_forward_kwargs
    from panda.model.module import chunked_causal_lm_losses

    kwargs = {"input_ids": batch["input_ids"]} if path == "causal" else packed_forward_kwargs(batch, path)
    hidden = model.model(**kwargs, use_cache=False).last_hidden_state  # (B, T, C)
    losses, trained = chunked_causal_lm_losses(hidden, model.lm_head, batch["labels"])
    (losses.sum() / trained.sum()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(model, optimizer, shape: str, device: torch.device, args, path: str) -> dict:
    from panda.training.monitor import training_flops_per_token

    model.set_attn_implementation("sdpa" if path == "causal" else path)
    batch = packed_rows(args.batch_size, args.seq_length, device)
    for _ in range(args.warmup):
        step(model, optimizer, batch, path)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(model, optimizer, batch, path)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    embedding = model.get_input_embeddings().weight
    matmul_params = sum(p.numel() for p in model.parameters() if p is not embedding)
    config = model.config
    per_token = training_flops_per_token(num_params=matmul_params, num_trainable=matmul_params,
                                         num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                                         context=args.seq_length)  # the row's causal attention: same for every path
    tokens = args.batch_size * args.seq_length
    result = {"path": path, "shape": shape, "params": sum(p.numel() for p in model.parameters()),
              "seconds_per_step": seconds, "tokens_per_s": tokens / seconds, "flops_per_s": per_token * tokens / seconds}
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
    parser.add_argument("--paths", nargs="*", default=["causal", "sdpa", "document_sdpa", "varlen",
                                                        "flash_attention_2", "flex_attention"])
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
    from panda.model.attention import flash_attn_installed

    paths = [p for p in args.paths if p != "flash_attention_2" or flash_attn_installed()]
    if len(paths) < len(args.paths):
        print("gpu_mfu: flash-attn is not installed (pip install '.[flash]'): flash_attention_2 skipped")
    for shape in shapes:
        try:
            model, optimizer = build(shape, device, args.seq_length)
            measure(model, optimizer, shape, device, args, "causal")  # probe that the step fits
            break
        except torch.OutOfMemoryError:
            print(f"gpu_mfu: {shape} does not fit with batch {args.batch_size} × {args.seq_length}; trying smaller")
            model = optimizer = None
            gc.collect()
            torch.cuda.empty_cache()
    else:
        print("gpu_mfu: no shape fits; lower --batch-size")
        return 1
    peak, source = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in model.parameters())
    print(f"device: {name}; LLaMA-{shape} shape, {params / 1e9:.2f}B parameters, bf16, activation checkpointing, "
          f"batch {args.batch_size} packed rows × {args.seq_length}; MFU counts the row's causal attention for "
          f"every path, so a path that skips cross-document work shows as higher MFU")
    print("| attention | s/step | tokens/s | model TFLOP/s | MFU | peak GiB | vs causal |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    floor = None
    for path in paths:
        try:
            result = measure(model, optimizer, shape, device, args, path)
        except Exception as error:  # one path failing (a missing kernel, a compile error) must not hide the others
            print(f"| {path} | failed: {type(error).__name__}: {str(error).splitlines()[0][:120]} | | | | | |")
            continue
        floor = floor or (result["tokens_per_s"] if path == "causal" else None)
        mfu = f"{result['flops_per_s'] / peak:.1%}" if peak else f"n/a ({source})"
        versus = f"{result['tokens_per_s'] / floor:.2f}×" if floor else ""
        print(f"| {path} | {result['seconds_per_step']:.3f} | {result['tokens_per_s']:,.0f} | "
              f"{result['flops_per_s'] / 1e12:.1f} | {mfu} | {result.get('peak_memory_gb', float('nan')):.1f} | "
              f"{versus} |")
    if peak:
        print(f"peak: {peak / 1e12:.0f} TFLOP/s ({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
