"""``python -m panda.weights <command>``: the weight tools, one subcommand each; ``--help`` on any of them.

    delta-make    base + trained model → verifiable delta (manifest with sha256 of base, delta, target)
    delta-apply   base + delta → the trained model, checked bit for bit (also the reference's float deltas)
    export        Lightning / DeepSpeed checkpoint → Hugging Face directory (LoRA merged or as adapters)
    extend-vocab  learn Chinese pieces, merge them into the tokenizer, grow and initialise the embeddings
    add-pad       the reference's 32001 vocabulary: <pad> at the next id, new rows = mean of the old rows

Arguments are read from the functions' signatures (jsonargparse), so the docstrings are the documentation.
"""

from __future__ import annotations

import sys


from panda.errors import run_command

from panda.weights.delta import apply_delta, make_delta
from panda.weights.export import export_checkpoint
from panda.weights.vocab import add_pad_token, extend_vocabulary

COMMANDS = {
    "delta-make": make_delta,
    "delta-apply": apply_delta,
    "export": export_checkpoint,
    "extend-vocab": extend_vocabulary,
    "add-pad": add_pad_token,
}


def main(args: list[str] | None = None) -> int:
    """Run one command; a mistake the user can fix (wrong base, truncated file, …) is one line on stderr, exit 1."""
    return run_command(COMMANDS, args, "panda weights", show=_show,
                       description="Panda weight tools: deltas, export to Hugging Face, vocabulary extension.")


def _show(result) -> None:
    if result is not None and not hasattr(result, "summary"):
        print(f"wrote {result}")


if __name__ == "__main__":
    sys.exit(main())
