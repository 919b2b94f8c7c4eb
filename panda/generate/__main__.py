"""``panda generate MODEL --input prompts.jsonl --output out.jsonl`` (also ``python -m panda.generate``).

Each input line is ``{"prompt": str}`` (a completion of raw text) or ``{"messages": [{"role", "content"}, ...]}``
(a conversation in the model's chat format, ending with the user's message). Each output line is the input object
with ``output`` (the generated text), ``prompt_tokens``, ``output_tokens`` and ``stop_reason`` (``eos``,
``stop_string`` or ``length``) added, in input order. A malformed line, or a prompt longer than the model's context,
is reported as ``file:line: reason`` and skipped; the rest is generated. The output is written under a temporary
name and renamed when complete, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from panda.errors import UserError, run_command
from panda.generate.engine import RequestError, Sampling, check_length, generate_all, request_ids
from panda.weights.loading import Dtype, load_pretrained


def read_requests(path: Path, loaded) -> tuple[list[tuple[int, dict, list[int]]], list[str]]:
    """``(line, request, prompt ids)`` of every usable line, and one ``file:line: reason`` per unusable one."""
    requests, problems = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                ids = request_ids(request, loaded)
                check_length(ids, loaded.context_length)
            except json.JSONDecodeError as error:
                problems.append(f"{path}:{number}: malformed JSON at column {error.colno}: {error.msg}")
            except RequestError as error:
                problems.append(f"{path}:{number}: {error}")
            else:
                requests.append((number, request, ids))
    return requests, problems


def generate(model: str, input: str | None = None, output: str | None = None, tokenizer: str | None = None, batch_size: int = 8,
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             repetition_penalty: float = 1.0, stop: list[str] | None = None, seed: int = 0,
             chat_format: str | None = None, dtype: Dtype = "auto", pretrained: str | None = None,
             adapters: str | None = None, overwrite: bool = False) -> dict:
    """Generate a reply for every line of a JSON-lines file.

    Args:
        model: A Hugging Face directory, a peft adapter directory, a PandaLM ``.ckpt`` or a DeepSpeed checkpoint
            folder.
        input: JSON lines of ``{"prompt": str}`` or ``{"messages": [...]}`` (required).
        output: Where to write the JSON lines with the replies (required).
        tokenizer: Tokenizer directory (default: the model's own, or the one its checkpoint names).
        batch_size: Prompts generated together (left padded, grouped by length).
        max_new_tokens: Most tokens generated per prompt.
        temperature: 0 = greedy; above 0 samples.
        top_p: Nucleus sampling threshold (1 = off).
        top_k: Sample among the k most likely tokens (0 = off).
        repetition_penalty: Above 1 discourages repeating tokens (1 = off).
        stop: Strings that end a reply besides EOS (the reply is cut before them).
        seed: Sampling seed: the same input, batch size and seed give the same output.
        chat_format: Override the chat format stored with the model (``reference`` or ``roles``).
        dtype: Weight dtype; ``auto`` = bfloat16 on GPU, float32 on CPU.
        pretrained: The base model directory, when a LoRA checkpoint's base moved.
        adapters: A peft adapter directory to merge into the base ``model``.
        overwrite: Replace an existing ``output``.
    """
    from panda.io import atomic_path
    from panda.progress import progress

    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, list(stop or []), seed)
    if batch_size < 1:
        from panda.errors import ConfigError

        raise ConfigError(f"--batch_size {batch_size}: expected at least 1")
    if input is None or output is None:
        from panda.errors import ConfigError

        raise ConfigError(f"--{'input' if input is None else 'output'} is required: panda generate MODEL --input "
                          "prompts.jsonl --output replies.jsonl")
    input_path, output_path = Path(input), Path(output)
    if not input_path.is_file():
        raise UserError(f"--input {input}: no such file")
    if output_path.exists() and not overwrite:
        raise UserError(f"--output {output} already exists; choose another file or pass --overwrite true")
    loaded = load_pretrained(model, tokenizer, dtype=dtype, pretrained=pretrained, adapters=adapters,
                             chat_format=chat_format)
    requests, problems = read_requests(input_path, loaded)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    replies = [None] * len(requests)
    with progress(total=len(requests), desc="generating", unit="prompt") as bar:
        for index, reply in generate_all(loaded, [ids for _, _, ids in requests], sampling, batch_size,
                                         on_batch=bar.update):
            replies[index] = reply
    counts = {"eos": 0, "stop_string": 0, "length": 0}
    with atomic_path(output_path, overwrite=overwrite) as partial, open(partial, "w", encoding="utf-8") as out:
        for (_, request, _), reply in zip(requests, replies):
            text = loaded.chat_format.reply_text(reply.text) if "messages" in request else reply.text
            counts[reply.stop_reason] += 1
            out.write(json.dumps({**request, "output": text, "prompt_tokens": reply.prompt_tokens,
                                  "output_tokens": reply.output_tokens, "stop_reason": reply.stop_reason},
                                 ensure_ascii=False) + "\n")
    summary = {"generated": len(requests), "skipped": len(problems), "output": str(output_path), **counts}
    print(f"wrote {len(requests)} replies to {output_path} ({counts['eos']} ended at EOS, {counts['stop_string']} at a "
          f"stop string, {counts['length']} at max_new_tokens); {len(problems)} lines skipped", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``panda generate``: exit 0 when the output was written (skipped lines are reported), 1 on a user error."""
    return run_command(generate, argv, "panda generate")


if __name__ == "__main__":
    sys.exit(main())
