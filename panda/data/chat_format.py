"""How a conversation becomes text: one renderer for training data, ``panda generate``/``panda chat`` and exports.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``. A
:class:`ChatFormat` turns it into the *segments* the tokenizer stage reads (text, trained?), so a model is prompted
at inference with exactly the text layout it was trained on; the export writes the same layout as a Jinja
``chat_template`` (:func:`chat_template`) for ``tokenizer.apply_chat_template`` and servers that read it.

Formats (``name``), shown for ``[user u0, assistant a0, user u1, assistant a1]``; ``|`` separates segments, ``[...]``
segments are trained and each is followed by EOS (added by :mod:`panda.data.tokenize`)::

    reference   u0 |[ a0] </s> | \\n\\nu1 |[ a1] </s>
                Panda's released models: no role markers, the reply joined to its prompt by ``join`` (the
                reference's ``inputs + " " + targets``: one space), turns separated by a blank line.
    roles       用户: u0\\n助手: |[ a0] </s> | \\n用户: u1\\n助手: |[ a1] </s>
                role-marked lines; a system message becomes a leading ``系统: …\\n`` line.

``join`` (a source's ``join:``) opens every reply; the drawings use the reference's ``" "``.

``multi_turn`` says how the history of a conversation is rendered, as :class:`~panda.data.sources.CorpusSource`
trains it: ``conversation`` (one example; every reply trained and closed by EOS, so the history at inference carries
those EOS tokens too) or ``panda_compat`` (the reference's flattening: one example per turn, the history is plain
untrained text without EOS, and in the reference format earlier replies are joined by a blank line:
``u0\\n\\na0\\n\\nu1 |[ a1]``). Adjacent untrained pieces are always one segment.

**Why a reply should start with a space (``join: " "``), and when the template is exact.** Our pipeline tokenizes every segment on its
own (the loss mask then comes from the boundaries); the template renders one string that a tokenizer encodes whole.
The two agree exactly when no BPE merge can cross a segment boundary. Every boundary here is either right after an
EOS (special tokens split the text before BPE runs) or right before the space that opens a reply: a SentencePiece
vocabulary (split by whitespace, as LLaMA's) has no piece with ``▁`` after another character, so nothing merges
across it as long as the text before it does not itself end in whitespace. With ``join: ""`` a merge can cross
the prompt/reply boundary (the pipeline never merges there), and the two may differ where one does. The dummy prefix our pipeline gives the
first segment is rendered as ``bos_token + " "`` (a Metaspace ``prepend_scheme: first`` tokenizer prefixes only the
string's start, which is ``<s>``). The export checks the equality on probe conversations (:func:`template_mismatch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from panda.errors import UserError

ChatFormatName = Literal["reference", "roles"]
MultiTurn = Literal["conversation", "panda_compat"]
FORMATS = ("reference", "roles")
ROLES = ("system", "user", "assistant")
TURN_SEPARATOR = "\n\n"
"""The reference's separator between conversation turns (and between a history's replies and prompts)."""
REFERENCE_JOIN = " "
"""The reference's prompt/reply join (``inputs + " " + targets``); a boundary BPE never merges across."""
USER_MARK, ASSISTANT_MARK, SYSTEM_MARK = "用户: ", "\n助手:", "系统: "
"""The ``roles`` format's markers (plain text: the vocabulary is not extended)."""

Segments = list[tuple[str, bool]]
CHAT_FORMAT_KEY = "panda_chat_format"
"""Where a checkpoint (top-level key) and an export's ``tokenizer_config.json`` keep the model's chat format."""


class ChatFormatError(UserError, ValueError):
    """An unknown chat format or a conversation that cannot be rendered; the message names the message at fault."""


@dataclass(frozen=True)
class ChatFormat:
    """The text layout a model is trained with and prompted in (see the module docstring).

    Args:
        name: ``reference`` (no role markers, as Panda's released models) or ``roles`` (role-marked lines).
        multi_turn: How history is rendered: ``conversation`` (replies closed by EOS) or ``panda_compat`` (the
            reference's flattened history, no EOS).
        join: Opens every reply (the reference: one space).
    """

    name: ChatFormatName = "reference"
    multi_turn: MultiTurn = "conversation"
    join: str = REFERENCE_JOIN

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            from panda.errors import did_you_mean

            raise ChatFormatError(f"chat format {self.name!r} is not one of {', '.join(FORMATS)}"
                                  f"{did_you_mean(str(self.name), FORMATS)}")
        if self.multi_turn not in ("conversation", "panda_compat"):
            raise ChatFormatError(f"chat format multi_turn {self.multi_turn!r} must be 'conversation' or "
                                  "'panda_compat'")

    # ---- rendering -------------------------------------------------------------------------------------------
    def segments(self, messages: Sequence[Mapping[str, str]], *, leading_separator: bool = False) -> Segments:
        """The conversation as ``(text, trained)`` segments; a final user message leaves the text ready for the reply.

        Under ``conversation`` every assistant message is trained; under ``panda_compat`` only a final one is, the
        earlier ones being history text. ``leading_separator`` reproduces a quirk of the reference's flattening
        (the turn-0 prompt of a multi-turn record, whose history is empty, is ``"\\n\\n" + inputs``); inference
        never sets it.
        """
        check_messages(messages)
        pieces: Segments = []
        last = len(messages) - 1
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            after_turn = any(m["role"] != "system" for m in messages[:index])
            if role == "system":
                pieces.append((SYSTEM_MARK + content + "\n" if self.name == "roles" else content + TURN_SEPARATOR,
                               False))
            elif role == "user":
                if self.name == "roles":
                    pieces.append((("\n" if after_turn else "") + USER_MARK + content + ASSISTANT_MARK, False))
                else:
                    separate = after_turn or (leading_separator and index == 0)
                    pieces.append(((TURN_SEPARATOR if separate else "") + content, False))
            elif self.multi_turn == "conversation" or index == last:
                pieces.append((self.join + content, True))
            else:  # panda_compat history: the reference joins earlier replies with a blank line, untrained
                pieces.append(((TURN_SEPARATOR if self.name == "reference" else self.join) + content, False))
        return _merge_untrained(pieces)

    def turn_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        """``[(inputs, targets), ...]`` (a COIG conversation) as messages."""
        messages = []
        for inputs, targets in pairs:
            messages += [{"role": "user", "content": inputs}, {"role": "assistant", "content": targets}]
        return messages

    def reply_text(self, generated: str) -> str:
        """The reply's content from the decoded generated text (the reply prefix removed, if the decoder kept it)."""
        return generated[len(self.join):] if self.join and generated.startswith(self.join) else generated

    # ---- storage ---------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_stored(cls, value) -> ChatFormat:
        """From what a checkpoint or export stored: a dict, a JSON string, a name, or None (the reference format)."""
        if value is None:
            return cls()
        if isinstance(value, ChatFormat):
            return value
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("{") else {"name": value}
        if not isinstance(value, Mapping):
            raise ChatFormatError(f"stored chat format {value!r}: expected a name or {{'name', 'multi_turn', 'join'}}")
        return cls(**{key: value[key] for key in ("name", "multi_turn", "join") if key in value})


def _merge_untrained(pieces: Segments) -> Segments:
    merged: Segments = []
    for text, trained in pieces:
        if merged and not trained and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, trained))
    return merged


def check_messages(messages) -> None:
    """Raise :class:`ChatFormatError` unless ``messages`` is [system?] user, assistant, user, … with string contents."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ChatFormatError("'messages' must be a non-empty list of {'role', 'content'} objects")
    expected = "user"
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise ChatFormatError(f"messages[{index}] must be an object with a string 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{index}]: role {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and index == 0:
            continue
        if role != expected:
            raise ChatFormatError(f"messages[{index}]: expected a {expected!r} message (system first if any, then "
                                  f"user and assistant alternating), got {role!r}")
        expected = "assistant" if role == "user" else "user"


# ---- token ids --------------------------------------------------------------------------------------------------


def prompt_ids(segments: Segments, tokenizer) -> list[int]:
    """BOS + the segments' ids, EOS after each trained one: the ids training builds for the same segments.

    The ids come from :func:`panda.data.tokenize.encode_segments` (the training code); the layout is the one
    :func:`panda.data.tokenize.encode_example` produces, without truncation (a test holds the two equal).
    """
    from panda.data.tokenize import encode_segments

    ids = [tokenizer.bos_token_id]
    for (_, trained), segment_ids in zip(segments, encode_segments([text for text, _ in segments], tokenizer)):
        ids += segment_ids
        if trained:
            ids.append(tokenizer.eos_token_id)
    return ids


def has_dummy_prefix(tokenizer) -> bool:
    """Whether the tokenizer gives a text's start a SentencePiece dummy prefix (LLaMA's ``"▁"``)."""
    from panda.data.tokenize import encode_segments

    probe = "的"
    return encode_segments([probe], tokenizer)[0] != encode_segments(["a", probe], tokenizer)[1]


# ---- Jinja chat template ------------------------------------------------------------------------------------------


def chat_template(chat_format: ChatFormat, tokenizer) -> str:
    """The format as a Jinja ``chat_template``: renders the string whose encoding equals :func:`prompt_ids`.

    ``add_generation_prompt`` changes nothing: a conversation that ends with a user message is already rendered
    up to where the reply starts (the reply's leading space is the model's to write).
    """
    start = "{{ bos_token }}" + ("{{ ' ' }}" if has_dummy_prefix(tokenizer) else "")
    reference = chat_format.name == "reference"
    compat = chat_format.multi_turn == "panda_compat"
    system = "{{ message['content'] + '\\n\\n' }}" if reference else "{{ '系统: ' + message['content'] + '\\n' }}"
    if reference:
        user = "{% if ns.turns %}{{ '\\n\\n' }}{% endif %}{{ message['content'] }}"
    else:
        user = "{% if ns.turns %}{{ '\\n' }}{% endif %}{{ '用户: ' + message['content'] + '\\n助手:' }}"
    join = json.dumps(chat_format.join)  # a JSON string is a Jinja string literal
    trained = "{{ " + join + " + message['content'] + eos_token }}"
    history = "{{ '\\n\\n' + message['content'] }}" if reference else "{{ " + join + " + message['content'] }}"
    assistant = f"{{% if loop.last %}}{trained}{{% else %}}{history}{{% endif %}}" if compat else trained
    return (
        "{% set ns = namespace(turns=false) %}" + start
        + "{% for message in messages %}"
        + "{% if message['role'] == 'system' %}" + system
        + "{% elif message['role'] == 'user' %}" + user + "{% set ns.turns = true %}"
        + "{% elif message['role'] == 'assistant' %}" + assistant + "{% set ns.turns = true %}"
        + "{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
        + "{% endfor %}"
    )


PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "今天天气怎么样？"}, {"role": "assistant", "content": "晴天，很暖和。"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "翻译：猫"},
     {"role": "assistant", "content": "cat"}, {"role": "user", "content": "狗呢？"},
     {"role": "assistant", "content": "dog"}, {"role": "user", "content": "谢谢 Thanks!"}],
)


def template_mismatch(chat_format: ChatFormat, tokenizer, template: str,
                      conversations=PROBE_CONVERSATIONS) -> str | None:
    """None when ``apply_chat_template`` with ``template`` gives the pipeline's ids on every probe conversation,
    else a description of the first difference (tokenizers whose dummy prefix follows every special token, like
    legacy LLaMA conversions, cannot match)."""
    for messages in conversations:
        expected = prompt_ids(chat_format.segments(messages), tokenizer)
        rendered = tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=True,
                                                 add_generation_prompt=True, return_dict=False)
        rendered = list(rendered["input_ids"] if isinstance(rendered, Mapping) else rendered)
        if rendered != expected:
            return f"for {json.dumps(messages, ensure_ascii=False)} the template gives {rendered}, the pipeline " \
                   f"{expected}"
    return None


# ---- the format of a training run -------------------------------------------------------------------------------

CONVERSATION_FORMATS = ("coig", "flan", "jsonl")
"""Corpus formats whose records are prompts with responses (rendered by a chat format); wudao and c4 are text.
A field template (``panda.data.templates``) renders prompts when it has a ``response``, text when it has ``text``."""


def _renders_prompts(source) -> bool:
    template = getattr(source, "field_template", None)
    if template is not None:
        return not template.text
    return source.format in CONVERSATION_FORMATS


def _has_conversations(source) -> bool:
    template = getattr(source, "field_template", None)
    return template.turns is not None if template is not None else source.format == "coig"


def training_chat_format(sources) -> ChatFormat | None:
    """The one chat format a training mix renders its prompts with (stored with the model), or None for pure text.

    Raises:
        ChatFormatError: when two sources render conversations differently (one model, one format).
    """
    chatty = [s for s in sources if _renders_prompts(s)]
    if not chatty:
        return None
    names = {(s.chat_format, s.join) for s in chatty}
    multi_turn = {s.multi_turn for s in chatty if _has_conversations(s)} or {"conversation"}
    if len(names) > 1 or len(multi_turn) > 1:
        described = ", ".join(f"{s.name}: {s.chat_format}/{s.multi_turn}/join {s.join!r}" for s in chatty)
        raise ChatFormatError(f"data sources render conversations differently ({described}); a model is prompted "
                              "in one format, so give every source the same chat_format and join (and every "
                              "conversation source the same multi_turn)")
    (name, join), = names
    return ChatFormat(name, multi_turn.pop(), join)
