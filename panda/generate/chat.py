"""``panda chat MODEL``: a multi-turn conversation in the terminal, the reply streamed token by token.

Type a message and press Enter; ``/reset`` starts a new conversation, ``/exit`` (or end of input, Ctrl-D) leaves.
The conversation is prompted in the model's chat format (the training renderer); when the history plus room for
the reply no longer fits the model's context, the oldest turns are dropped and the session says how many.
Streaming uses transformers' ``TextStreamer`` on the same ``generate`` call that ``panda generate`` makes.
"""

from __future__ import annotations

import sys

from transformers import TextStreamer

from panda.errors import run_command
from panda.generate.engine import RequestError, Sampling, check_length, generate_ids, request_ids
from panda.weights.loading import Dtype, load_pretrained

HELP = "type a message; /reset starts over, /exit leaves"


class ChatSession:
    """The conversation state of one ``panda chat``: history, trimming and one reply per user message."""

    def __init__(self, loaded, sampling: Sampling, system: str | None = None, out=None) -> None:
        self.loaded, self.sampling, self.system = loaded, sampling, system
        self.out = out or sys.stdout
        self.history: list[dict[str, str]] = []

    def messages(self, history: list[dict[str, str]]) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def reset(self) -> None:
        self.history = []

    def fit(self, message: str) -> list[int]:
        """Prompt ids of the history plus ``message``, dropping the oldest turns until the reply has room."""
        budget = self.loaded.context_length - min(self.sampling.max_new_tokens, self.loaded.context_length // 2)
        history = self.history + [{"role": "user", "content": message}]
        dropped = 0
        while True:
            ids = request_ids({"messages": self.messages(history)}, self.loaded)
            if len(ids) <= budget or len(history) == 1:
                break
            history, dropped = history[2:], dropped + 1
        check_length(ids, self.loaded.context_length)
        if dropped:
            print(f"[dropped the {dropped} oldest turn{'s' * (dropped > 1)} to fit the {self.loaded.context_length}-"
                  "token context]", file=self.out, flush=True)
        self.history = history[:-1]
        return ids

    def reply(self, message: str) -> str:
        """Stream the model's reply to ``message`` to ``out`` and add both to the history."""
        ids = self.fit(message)
        streamer = Streamer(self.loaded.tokenizer, self.out)
        reply = generate_ids(self.loaded, [ids], self.sampling, streamer=streamer)[0]
        text = self.loaded.chat_format.reply_text(reply.text)
        print(file=self.out, flush=True)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return text


class Streamer(TextStreamer):
    """``TextStreamer`` writing to a chosen stream (the prompt is not echoed, special tokens are not shown)."""

    def __init__(self, tokenizer, out) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text)
        self.out.flush()


def chat(model: str, tokenizer: str | None = None, system: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
         stop: list[str] | None = None, seed: int = 0, chat_format: str | None = None, dtype: Dtype = "auto",
         pretrained: str | None = None, adapters: str | None = None) -> None:
    """Talk to a model in the terminal (see the module docstring).

    Args:
        model: A Hugging Face directory, a peft adapter directory, a PandaLM ``.ckpt`` or a DeepSpeed checkpoint
            folder.
        tokenizer: Tokenizer directory (default: the model's own, or the one its checkpoint names).
        system: A system message opening the conversation.
        max_new_tokens: Most tokens per reply.
        temperature: 0 = greedy; above 0 samples.
        top_p: Nucleus sampling threshold (1 = off).
        top_k: Sample among the k most likely tokens (0 = off).
        repetition_penalty: Above 1 discourages repeating tokens (1 = off).
        stop: Strings that end a reply besides EOS.
        seed: Sampling seed.
        chat_format: Override the chat format stored with the model (``reference`` or ``roles``).
        dtype: Weight dtype; ``auto`` = bfloat16 on GPU, float32 on CPU.
        pretrained: The base model directory, when a LoRA checkpoint's base moved.
        adapters: A peft adapter directory to merge into the base ``model``.
    """
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, list(stop or []), seed)
    loaded = load_pretrained(model, tokenizer, dtype=dtype, pretrained=pretrained, adapters=adapters,
                             chat_format=chat_format)
    session = ChatSession(loaded, sampling, system)
    interactive = sys.stdin.isatty()
    print(f"panda chat: {model} ({loaded.chat_format.name} format, {loaded.context_length}-token context); {HELP}",
          flush=True)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        message = line.strip()
        if not message:
            continue
        if message == "/exit":
            break
        if message == "/reset":
            session.reset()
            print("[new conversation]", flush=True)
            continue
        try:
            session.reply(message)
        except RequestError as error:
            print(f"[{error}]", flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_command(chat, argv, "panda chat")


if __name__ == "__main__":
    sys.exit(main())
