"""Chinese vocabulary extension: the Chinese-LLaMA recipe, without moving a single existing token id.

LLaMA's 32k SentencePiece vocabulary holds a few hundred Chinese characters; everything else falls back to UTF-8
bytes, so a Chinese character costs ~1.5–3 tokens and a 2048-token window holds ~1k characters. The recipe:

1. train a SentencePiece BPE model on Chinese text (:func:`panda.data.tokenizer.train_sentencepiece`, the same
   LLaMA options);
2. append its pieces that LLaMA lacks to LLaMA's model proto. Old pieces keep their ids, types and scores. New
   pieces keep their relative order but score below every old piece, so every merge the old tokenizer would do
   still happens first and the new pieces only take over text the old vocabulary had to spell out. Tokens the
   Hugging Face tokenizer added beyond the SentencePiece model (LLaMA-Panda's ``<pad>`` at 32000) are written into
   the proto at their ids first, so they keep them too;
3. grow ``embed_tokens`` and ``lm_head`` and start each new row at the mean of the rows of the pieces the *old*
   tokenizer splits the new piece's text into (its own spelling, so the model's first guess for ``中国人`` is what
   it already knew about ``中`` ``国`` ``人``), instead of noise;
4. train the new rows first with the body frozen (``model.trainable: embeddings`` in PandaLM), then everything.

The printed tokens-per-character on held-out text shows what the extension buys.

:func:`add_pad_token` (``panda weights add-pad``) is the smallest extension: the reference's ``<pad>`` appended at
the next id (LLaMA's 32000 → 32001 tokens), each new embedding and output row set to the mean of the old rows.
Panda itself never needs it (a tokenizer without pad token pads with an existing id, see
:mod:`panda.data.tokenizer`); it reproduces the reference's vocabulary, whose released weights have 32001 rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from panda.progress import progress
from panda.weights.shards import atomic_directory

WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", a space in the text


def _proto(model: bytes):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    return proto


def merge_sentencepiece(base_model: bytes, extra_model: bytes, *, added_tokens: Iterable[tuple[str, bool]] = ()
                        ) -> tuple[bytes, list[str]]:
    """Append ``extra_model``'s new pieces to ``base_model``; return the merged proto and the new pieces in id order.

    Args:
        base_model: The serialized SentencePiece model whose ids must not change (LLaMA's ``tokenizer.model``).
        extra_model: A serialized SentencePiece model trained on the new language.
        added_tokens: ``(content, special)`` of tokens a Hugging Face tokenizer added after the SentencePiece
            pieces, in id order; they are written into the proto first (special ones as control pieces).
    """
    from sentencepiece import sentencepiece_model_pb2

    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    base, extra = _proto(base_model), _proto(extra_model)
    known = {piece.piece for piece in base.pieces}
    for content, special in added_tokens:
        if content in known:
            raise ValueError(f"added token {content!r} is already a SentencePiece piece; its id would be ambiguous")
        base.pieces.add(piece=content, score=0.0, type=piece_type.CONTROL if special else piece_type.USER_DEFINED)
        known.add(content)
    lowest = min((piece.score for piece in base.pieces if piece.type == piece_type.NORMAL), default=0.0)
    extra_top = max((piece.score for piece in extra.pieces if piece.type == piece_type.NORMAL), default=0.0)
    new_pieces = []
    for piece in extra.pieces:
        if piece.type != piece_type.NORMAL or piece.piece in known:
            continue
        base.pieces.add(piece=piece.piece, score=lowest - 1.0 - (extra_top - piece.score), type=piece_type.NORMAL)
        known.add(piece.piece)
        new_pieces.append(piece.piece)
    base.trainer_spec.vocab_size = len(base.pieces)
    return base.SerializeToString(), new_pieces


def old_piece_ids(base_model: bytes, texts: list[str]) -> list[list[int]]:
    """How the old SentencePiece model spells each text (``▁`` as a space), without adding a dummy prefix."""
    import sentencepiece as spm

    proto = _proto(base_model)
    proto.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return [processor.encode(text.replace(WORD_BOUNDARY, " ")) for text in texts]


def initialise_new_rows(model, base_model: bytes, new_pieces: list[str], first_new_id: int) -> None:
    """Resize the model's embeddings and set each new row to the mean of its old-tokenizer pieces' rows.

    Args:
        model: A Hugging Face causal LM with ``first_new_id`` embedding rows.
        base_model: The old serialized SentencePiece model (defines the spelling of each new piece).
        new_pieces: The new pieces; piece ``i`` gets id ``first_new_id + i``.
        first_new_id: The old vocabulary size (rows of the model before the extension).
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != first_new_id:
        raise ValueError(f"the model has {rows} embedding rows but its tokenizer {first_new_id} tokens; "
                         "extension needs them equal (pass the tokenizer the model was trained with)")
    spellings = old_piece_ids(base_model, new_pieces)
    for piece, ids in zip(new_pieces, spellings):
        if not ids or max(ids) >= rows:
            raise ValueError(f"new piece {piece!r}: the old tokenizer spells it as {ids}, not as old ids")
    with torch.no_grad():
        for weight in _resized_matrices(model, first_new_id + len(new_pieces)):  # (V_new, H)
            for offset, ids in enumerate(spellings):
                weight[first_new_id + offset] = weight[ids].float().mean(0).to(weight.dtype)


def _resized_matrices(model, new_rows: int) -> list[torch.Tensor]:
    """Resize the model's vocabulary to ``new_rows`` (new rows uninitialised) and return the embedding and, when
    untied, output matrices to initialise."""
    model.resize_token_embeddings(new_rows, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    return matrices


def tokens_per_character(tokenizer, texts: list[str]) -> float:
    """Tokens (special tokens excluded) per character over ``texts``."""
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return tokens / max(1, sum(len(text) for text in texts))


def read_corpus(paths: str | list[str]) -> list[str]:
    """Non-empty lines of text files; ``.jsonl`` files give each record's ``text``."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    texts = []
    for path in map(Path, paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    line = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
            texts.append(line)
    if not texts:
        raise ValueError(f"no text in {', '.join(paths)}")
    return texts


@dataclass
class VocabularyExtension:
    """What an extension did: sizes and tokens per character of held-out text, before and after."""

    old_size: int
    new_size: int
    new_pieces: int
    held_out_characters: int
    tokens_per_char_before: float
    tokens_per_char_after: float

    def summary(self) -> str:
        ratio = self.tokens_per_char_before / max(self.tokens_per_char_after, 1e-9)
        return (f"vocabulary {self.old_size} → {self.new_size} (+{self.new_pieces} pieces); tokens per character on "
                f"{self.held_out_characters} held-out characters: {self.tokens_per_char_before:.3f} → "
                f"{self.tokens_per_char_after:.3f} ({ratio:.2f}× fewer tokens)")


def extend_vocabulary(model: str, corpus: str | list[str], output: str, *, tokenizer: str | None = None,
                      vocab_size: int = 20000, held_out: str | list[str] | None = None, held_out_lines: int = 200,
                      overwrite: bool = False) -> VocabularyExtension:
    """Extend a LLaMA-style model's vocabulary with pieces learnt from a Chinese corpus (see module docstring).

    Args:
        model: Hugging Face model directory to extend (``save_pretrained`` layout).
        corpus: Text file(s) (one document per line; ``.jsonl``: a ``text`` field per line) to learn pieces from;
            several as ``[a.txt,b.txt]``.
        output: The extended model + tokenizer directory to create (appears only when complete).
        tokenizer: The model's tokenizer directory (default: ``model``); needs ``tokenizer.model``.
        vocab_size: Size of the SentencePiece model trained on the corpus (its new pieces are added).
        held_out: Text file(s) to measure tokens per character on; by default the corpus's last lines.
        held_out_lines: How many corpus lines to hold out when ``held_out`` is not given.
        overwrite: Replace an existing ``output``.
    """
    from transformers import AutoModelForCausalLM

    from panda.data.tokenizer import load_tokenizer, save_tokenizer_dir, train_sentencepiece

    tokenizer_dir = Path(tokenizer or model)
    if not (tokenizer_dir / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer.model (the SentencePiece model to extend)")
    texts = read_corpus(corpus)
    if held_out:
        evaluation = read_corpus(held_out)
    else:
        if len(texts) <= held_out_lines:
            raise ValueError(f"the corpus has {len(texts)} lines; hold out fewer (--held_out_lines) or pass --held_out")
        texts, evaluation = texts[:-held_out_lines], texts[-held_out_lines:]
    old_tokenizer = load_tokenizer(tokenizer_dir)
    base_model = (tokenizer_dir / "tokenizer.model").read_bytes()
    piece_count = len(_proto(base_model).pieces)
    added = sorted((i, t) for i, t in old_tokenizer.added_tokens_decoder.items() if i >= piece_count)
    if [i for i, _ in added] != list(range(piece_count, piece_count + len(added))):
        raise ValueError(f"{tokenizer_dir}: added token ids {[i for i, _ in added]} do not follow the "
                         f"{piece_count} SentencePiece pieces contiguously; cannot keep them in place")
    stages = progress(desc="extend-vocab", total=4, unit="stage")
    stages.set_postfix_str(f"learning {vocab_size} pieces from {len(texts)} lines")
    merged, new_pieces = merge_sentencepiece(base_model, train_sentencepiece(texts, vocab_size),
                                             added_tokens=[(t.content, t.special) for _, t in added])
    stages.update()
    stages.set_postfix_str("loading the model")
    hf_model = AutoModelForCausalLM.from_pretrained(model, dtype="auto", trust_remote_code=False)
    stages.update()
    with atomic_directory(output, overwrite=overwrite) as staging:
        save_tokenizer_dir(merged, staging, model_max_length=old_tokenizer.model_max_length)
        new_tokenizer = load_tokenizer(staging)
        stages.set_postfix_str(f"initialising {len(new_pieces)} rows")
        initialise_new_rows(hf_model, base_model, new_pieces, len(old_tokenizer))
        stages.update()
        stages.set_postfix_str("writing")
        if hf_model.get_input_embeddings().weight.shape[0] != len(new_tokenizer):
            raise ValueError(f"the merged tokenizer has {len(new_tokenizer)} tokens but the resized model "
                             f"{hf_model.get_input_embeddings().weight.shape[0]} rows")
        hf_model.save_pretrained(staging)
        result = VocabularyExtension(
            old_size=len(old_tokenizer), new_size=len(new_tokenizer), new_pieces=len(new_pieces),
            held_out_characters=sum(len(t) for t in evaluation),
            tokens_per_char_before=tokens_per_character(old_tokenizer, evaluation),
            tokens_per_char_after=tokens_per_character(new_tokenizer, evaluation))
        (staging / "vocab_extension.json").write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    stages.update()
    stages.close()
    print(result.summary())
    return result


def mean_resize(model, new_rows: int) -> None:
    """Grow ``embed_tokens`` and ``lm_head`` to ``new_rows`` rows, each new row the mean of all old rows (float32)."""
    rows = model.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        for weight in _resized_matrices(model, new_rows):  # (V_new, H)
            weight[rows:] = weight[:rows].float().mean(0).to(weight.dtype)


def add_pad_token(model: str, output: str, *, tokenizer: str | None = None, pad_token: str = "<pad>",
                  overwrite: bool = False) -> Path:
    """Add the reference's pad token: a model + tokenizer directory with ``pad_token`` at the next id.

    LLaMA-7B's 32000 tokens become 32001 (``<pad>`` = 32000, as Panda-7B's released weights); ``embed_tokens`` and
    ``lm_head`` grow by one row, set to the mean of the old rows; ``config.pad_token_id`` names the new id.
    Train the result with ``model.pretrained`` and ``data.tokenizer`` both set to ``output``.

    Args:
        model: Hugging Face model directory (``save_pretrained`` layout) whose tokenizer has no pad token.
        output: The directory to create (appears only when complete).
        tokenizer: The model's tokenizer directory (default: ``model``).
        pad_token: The token to add.
        overwrite: Replace an existing ``output``.
    """
    from transformers import AutoModelForCausalLM

    from panda.data.tokenizer import check_vocabulary, load_tokenizer

    tokenizer_dir = Path(tokenizer or model)
    loaded = load_tokenizer(tokenizer_dir, fill_pad=False)
    if loaded.pad_token_id is not None:
        raise ValueError(f"{tokenizer_dir}: the tokenizer already has a pad token {loaded.pad_token!r} "
                         f"(id {loaded.pad_token_id}); nothing to add")
    old_size = len(loaded)
    hf_model = AutoModelForCausalLM.from_pretrained(model, dtype="auto", trust_remote_code=False)
    rows = hf_model.get_input_embeddings().weight.shape[0]
    check_vocabulary(rows, loaded, model=str(model), tokenizer_name=f"tokenizer {tokenizer_dir}")
    if rows != old_size:
        raise ValueError(f"{model} has {rows} vocabulary rows but tokenizer {tokenizer_dir} {old_size} tokens; "
                         "the pad row goes at the tokenizer's next id, so they must be equal")
    loaded.add_special_tokens({"pad_token": pad_token})
    if loaded.pad_token_id != old_size:
        raise ValueError(f"{pad_token!r} got id {loaded.pad_token_id}, not the next id {old_size}: it is already a "
                         "token of this vocabulary; pass another --pad_token")
    mean_resize(hf_model, old_size + 1)
    hf_model.config.pad_token_id = old_size
    hf_model.generation_config.pad_token_id = old_size
    with atomic_directory(output, overwrite=overwrite) as staging:
        hf_model.save_pretrained(staging)
        loaded.save_pretrained(staging)
    print(f"vocabulary {old_size} → {old_size + 1}: {pad_token!r} at id {old_size}, new embedding and output rows = "
          f"mean of the old rows; wrote {output}")
    return Path(output)
