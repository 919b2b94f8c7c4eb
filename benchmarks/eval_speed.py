"""Questions per second: the log-likelihood protocol against the reference's generate-64 protocol, on CPU.

Both run the same tiny LLaMA (random weights, a 4k SentencePiece tokenizer trained on People's Daily in a few
seconds) over the same C3-format questions built from real People's Daily text, the context being a paragraph:
``--data sentences`` (the default) asks which of four sentences continues it (options of ~40 tokens),
``--data words`` which of four nouns occurs in it (short options). The prompt is the reference's zero-shot prompt.
``generate-64`` is the reference protocol as :mod:`panda.eval.generation` runs it: greedy, at most 64 new tokens,
stopping at the model's EOS (not suppressed; the mean number of new tokens is printed — an untrained model rarely
stops early). ``loglik`` scores the four options after one prompt forward whose KV cache they share, a question's
options in one tree-masked row (``share_prompt``, the default); ``loglik_joint`` runs one ``prompt + option`` row per
option. Each batch size is measured for all protocols alike on the same questions, batched longest first (as
``BenchmarkDataModule`` batches them), the protocols taking turns within each of ``--repeats`` rounds (medians
and min–max of questions/s, median CPU seconds; the speed-up is the median of the per-round ratios, as the
machine is shared); tokenization is timed for all of them. ``prompt-forward (floor)`` is one forward over the
prompts alone: every protocol pays at least that, so its speed-up bounds what any protocol can reach — at larger
batch sizes generate-64's batched decode steps cost little next to the prompts, and so does the gap any protocol
that reads the prompt can open. ``prompt + option logits (floor)`` adds to that what an exact log-likelihood must
pay on top whatever the layout: the output head and the log-softmax at every scored option position (on stand-in
hidden states; the option tokens' own layers and their attention over the cached prompt are left out, so it is a
floor, not an estimate): its speed-up bounds what any exact loglik layout can reach. Goal: loglik ≥ 5× generate-64.

    .venv/bin/python benchmarks/eval_speed.py [--data sentences|words] [--questions 32] [--batch-sizes 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


PROMPT_ONLY = "prompt-forward (floor)"
WITH_HEAD = "prompt + option logits (floor)"


def continuation_questions(paragraphs: list[str], count: int, seed: int = 0) -> list[dict]:
    """C3-style questions: which sentence continues the paragraph (distractors from other paragraphs)."""
    rng = random.Random(seed)
    usable = [p for p in paragraphs if p.count("。") >= 3 and 80 <= len(p) <= 400]
    endings = [p.split("。")[-2] + "。" for p in usable]
    questions = []
    for index, paragraph in enumerate(usable[:count]):
        sentences = paragraph.split("。")
        context, answer = "。".join(sentences[:-2]) + "。", sentences[-2] + "。"
        options = [answer] + rng.sample([e for e in endings if e != answer], 3)
        rng.shuffle(options)
        questions.append({"context": context, "options": options, "label": options.index(answer), "index": index})
    return questions


def word_questions(tagged: list[list[tuple[str, str]]], count: int, seed: int = 0) -> list[dict]:
    """C3-style questions with short options: which noun occurs in the paragraph (distractors from elsewhere)."""
    rng = random.Random(seed)
    nouns = sorted({w for pairs in tagged for w, t in pairs if t.startswith("n") and 2 <= len(w) <= 4})
    questions = []
    for pairs in tagged:
        text = "".join(w for w, _ in pairs)
        own = [w for w, t in pairs if t.startswith("n") and 2 <= len(w) <= 4]
        if not 80 <= len(text) <= 400 or not own:
            continue
        answer = rng.choice(own)
        options = [answer] + rng.sample([n for n in nouns if n not in text][:5000], 3)
        rng.shuffle(options)
        questions.append({"context": text, "options": options, "label": options.index(answer),
                          "index": len(questions)})
        if len(questions) == count:
            break
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size (medians, min–max)")
    parser.add_argument("--data", choices=["sentences", "words"], default="sentences",
                        help="short options (a word, like C3's) or long ones (a whole sentence, like LogiQA's)")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from panda.data.tokenizer import load_tokenizer, train_tokenizer
    from panda.demo.corpora import people_daily_paragraphs, tagged_paragraphs
    from panda.eval.benchmarks import Question
    from panda.eval.datamodule import question_length
    from panda.eval.generation import extract_answer, generate_texts
    from panda.eval.loading import encode_many
    from panda.eval.loglik import LOGPROB_CHUNK, _logits_at, right_pad, score_options
    from panda.eval.prompts import build_prompt

    torch.set_num_threads(args.threads)
    paragraphs = people_daily_paragraphs()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(train_tokenizer(paragraphs[:3000], Path(tmp) / "tokenizer", vocab_size=4000))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()

    if args.data == "sentences":
        raw = continuation_questions(paragraphs[3000:], args.questions)
        asked = "下面哪一句接在这段文字后面？"
    else:
        raw = word_questions(tagged_paragraphs()[3000:], args.questions)
        asked = "下面哪个词在文章中出现过？"
    prepared = [{"prompt": build_prompt(Question(q["index"], q["context"], asked, tuple(q["options"]), q["label"])),
                 "options": q["options"]} for q in raw]
    prepared.sort(key=question_length, reverse=True)  # batched longest first, as BenchmarkDataModule does
    prompts = [q["prompt"] for q in prepared]
    options = [q["options"] for q in prepared]
    prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts) / len(prompts)
    option_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in sum(options, [])) / (
        4 * len(raw))

    def prompt_forward(batch):
        """The cheapest forward over the prompts alone (tokenized here too): right-padded, no mask (causal
        attention keeps pads out), the output head at each prompt's last token only."""
        ids = encode_many(tokenizer, [prompts[i] for i in batch])
        last = torch.tensor([len(row) - 1 for row in ids])
        with torch.no_grad():
            _logits_at(model, torch.arange(len(ids)), last, max(map(len, ids)), input_ids=right_pad(ids, 0))
        return [None] * len(batch)

    scored = [sum(o["tokens"] for o in q) for q in score_options(model, tokenizer, prompts, options)]

    def logits_floor(batch):
        """:func:`prompt_forward`, then the output head and log-softmax at every scored option position."""
        prompt_forward(batch)
        hidden = torch.randn(sum(scored[i] for i in batch), args.hidden)
        with torch.no_grad():
            for block in hidden.split(LOGPROB_CHUNK):
                torch.log_softmax(model.get_output_embeddings()(block), dim=-1)
        return [None] * len(batch)

    def measure(batch_size, protocols):
        """Wall and CPU seconds of a pass over all questions, per protocol and round; the protocols take turns
        within each round so that a load change on the shared machine hits all of them alike."""
        batches = [range(s, min(s + batch_size, len(raw))) for s in range(0, len(raw), batch_size)]
        for fn in protocols.values():
            fn(batches[0])  # warm-up
        wall = {name: [] for name in protocols}
        cpu = {name: [] for name in protocols}
        outputs = {}
        for _ in range(args.repeats):
            for name, fn in protocols.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[name] = [out for batch in batches for out in fn(batch)]
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        measured = {}
        for name in protocols:
            rate = sorted(len(raw) / w for w in wall[name])
            speedup = statistics.median(g / w for g, w in zip(wall["generate-64"], wall[name]))  # same round
            measured[name] = {"protocol": name, "batch_size": batch_size, "questions": len(raw),
                              "questions_per_s": round(statistics.median(rate), 2),
                              "min_max": f"{rate[0]:.2f}–{rate[-1]:.2f}",
                              "cpu_s": round(statistics.median(cpu[name]), 3),
                              "speedup_vs_generate": round(speedup, 1)}
        return measured, outputs

    results = []
    for batch_size in args.batch_sizes:
        protocols = {"generate-64": lambda b: generate_texts(model, tokenizer, [prompts[i] for i in b], 64)}
        for name, share in (("loglik", True), ("loglik_joint", False)):
            protocols[name] = lambda b, share=share: score_options(
                model, tokenizer, [prompts[i] for i in b], [options[i] for i in b], share_prompt=share)
        protocols[PROMPT_ONLY] = prompt_forward
        protocols[WITH_HEAD] = logits_floor
        measured, outputs = measure(batch_size, protocols)
        generated = measured["generate-64"]
        generated["unparseable_rate"] = round(
            sum(extract_answer(t) is None for t in outputs["generate-64"]) / len(raw), 3)
        generated["mean_new_tokens"] = round(sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                                 for t in outputs["generate-64"]) / len(raw), 1)
        results.extend(measured.values())
    setup = {"data": args.data, "repeats": args.repeats,
             "model": f"LLaMA hidden {args.hidden}, {args.layers} layers, vocab {len(tokenizer)}",
             "threads": args.threads, "mean_prompt_tokens": round(prompt_tokens, 1),
             "mean_option_tokens": round(option_tokens, 1), "max_new_tokens": 64, "eos": "not suppressed"}
    print(json.dumps(setup, ensure_ascii=False))
    print("| batch size | protocol | questions/s (median) | min–max | CPU s | speed-up vs generate-64 "
          "(same batch, median of rounds) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batch_size']} | {r['protocol']} | {r['questions_per_s']} | {r['min_max']} | {r['cpu_s']} | "
              f"{r['speedup_vs_generate']}× |")
    best = {name: max((r for r in results if r["protocol"] == name), key=lambda r: r["questions_per_s"])
            for name in ("generate-64", "loglik")}
    ratio = best["loglik"]["questions_per_s"] / best["generate-64"]["questions_per_s"]
    print(f"\nbest loglik (batch {best['loglik']['batch_size']}) vs best generate-64 (batch "
          f"{best['generate-64']['batch_size']}): {ratio:.1f}×")
    print(f"{PROMPT_ONLY}: the prompts' forward alone, which every protocol pays; its speed-up is the ceiling "
          "for any protocol that reads the prompt")
    print(f"{WITH_HEAD}: that plus the output head and log-softmax at the scored option positions; its speed-up "
          "bounds any exact log-likelihood layout")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
