"""Greedy tokens/s: ``panda generate``'s path against a direct ``model.generate`` on the same prompts, on CPU.

Both run the same small LLaMA (random weights; a 4k LLaMA-style SentencePiece tokenizer trained on People's Daily
in a few seconds) on the same prompts (People's Daily paragraphs cut to ``--prompt-chars``), greedy, exactly
``--new-tokens`` new tokens each (EOS is suppressed in both, so both produce the same token count), in batches of
``--batch-size``. ``panda generate`` is timed from the JSON-lines input file to the written output file (request
parsing, chat-format encoding, length-sorted batching, ``generate``, decoding, JSON writing); the model is loaded
once beforehand, as loading is the same for both. ``direct`` is what a user would write by hand: the tokenizer with
left padding over the prompts in input order, one ``model.generate`` per batch, ``batch_decode``. The two take
turns within each of ``--repeats`` rounds; the table shows medians and min–max of tokens/s, the median CPU seconds,
and the ratio as the median of the per-round ratios (the machine is shared). Goal: panda ≥ 0.95× direct.

    .venv/bin/python benchmarks/generate_speed.py [--prompts 32] [--batch-size 8] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(workdir: Path, paragraphs: list[str], args) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    import torch

    from panda.data.tokenizer import load_tokenizer, train_tokenizer

    tokenizer = load_tokenizer(train_tokenizer(paragraphs[:2000], workdir / "model", vocab_size=4000))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(workdir / "model")
    return workdir / "model"


def run_panda(loaded, input_path: Path, output_path: Path, args) -> int:
    from panda.generate.__main__ import read_requests
    from panda.generate.engine import Sampling, generate_all

    requests, problems = read_requests(input_path, loaded)
    assert not problems, problems
    sampling = Sampling(max_new_tokens=args.new_tokens)
    replies = dict(generate_all(loaded, [ids for _, _, ids in requests], sampling, args.batch_size))
    tokens = 0
    with open(output_path, "w", encoding="utf-8") as out:
        for index, (_, request, _) in enumerate(requests):
            reply = replies[index]
            tokens += reply.output_tokens
            out.write(json.dumps({**request, "output": reply.text, "output_tokens": reply.output_tokens},
                                 ensure_ascii=False) + "\n")
    return tokens


def run_direct(loaded, prompts: list[str], args) -> int:
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.padding_side = "left"
    tokens = 0
    for start in range(0, len(prompts), args.batch_size):
        batch = tokenizer(prompts[start:start + args.batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**batch, do_sample=False, max_new_tokens=args.new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
        new = output[:, batch["input_ids"].shape[1]:]
        tokenizer.batch_decode(new, skip_special_tokens=True)
        tokens += new.numel()
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-chars", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from panda.demo.corpora import people_daily_paragraphs
    from panda.weights.loading import load_pretrained

    torch.set_num_threads(args.threads)
    paragraphs = people_daily_paragraphs()
    prompts = [p[:args.prompt_chars] for p in paragraphs[3000:] if len(p) >= 20][:args.prompts]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loaded = load_pretrained(build(workdir, paragraphs, args), device="cpu")
        # EOS suppressed in the model itself (a logit bias), so both paths generate exactly --new-tokens per prompt
        bias = torch.zeros(loaded.model.config.vocab_size)
        bias[loaded.tokenizer.eos_token_id] = -1e4
        loaded.model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
        input_path = workdir / "prompts.jsonl"
        input_path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts),
                              encoding="utf-8")
        arms = {"panda generate": lambda: run_panda(loaded, input_path, workdir / "out.jsonl", args),
                "direct model.generate": lambda: run_direct(loaded, prompts, args)}
        for arm in arms.values():  # warm-up (allocator, kernels)
            arm()
        rates = {name: [] for name in arms}
        cpu = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                wall, process = time.perf_counter(), time.process_time()
                tokens = arm()
                rates[name].append(tokens / (time.perf_counter() - wall))
                cpu[name].append(time.process_time() - process)
    ratios = [a / b for a, b in zip(rates["panda generate"], rates["direct model.generate"])]
    print(f"\n{len(prompts)} prompts × {args.new_tokens} new tokens, batch {args.batch_size}, greedy, "
          f"LLaMA {args.layers}×{args.hidden}, {args.threads} threads, {args.repeats} interleaved rounds\n")
    print("| path | tokens/s (median) | min–max | CPU s (median) | vs direct |")
    print("|---|---:|---:|---:|---:|")
    for name in arms:
        ratio = statistics.median(ratios) if name == "panda generate" else 1.0
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {min(rates[name]):,.0f}–{max(rates[name]):,.0f} | "
              f"{statistics.median(cpu[name]):.2f} | {ratio:.2f}× |")
    print(f"\nper-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}  (goal ≥ 0.95×)")


if __name__ == "__main__":
    main()
