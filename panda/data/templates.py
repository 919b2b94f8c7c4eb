"""Field templates: how a public corpus's records, in their published layout, become prompt and response.

The corpora Panda-7B trained on are JSON records with their own field names. Rather than converting them into a
second 16 GB copy, a :class:`CorpusSource` names a template (``format: news2016zh``) or declares its own in YAML
(``format: template`` + ``template: {...}``), and the records are read in place.

A template is a few lists of *parts*. A part is a string with ``{field}`` placeholders; a part whose placeholders
are all blank (empty, whitespace or ``null``) is left out, a part without placeholders is fixed text; the parts
kept are joined with ``separator``::

    text:      [parts]           -> one trained segment (full loss: every token)
    prompt:    [parts]           -> untrained segment   ┐ conditional: only the response is trained
    response:  [parts]           -> trained segment     ┘
    turns:     "round_"          -> a conversation: the record's keys round_1, round_2, ... (numeric order), each an
                                    object rendered with prompt/response as one turn (COIG's multi-round chats)

A record lacking a field a part names, or holding an object/array there, is a bad record (``file:line`` and the
field name); a template naming a field that occurs in none of a source's first records stops the run at start,
naming the source and the field (a misspelt template would otherwise skip every record).

The named templates (written down here once, quoted in the README). The reference said every corpus but wiki
and news used "a fixed instruction template" it never published; these are ours. COIG's follow the reference's
own conversion of COIG's released files (pandallm ``unify_format.ipynb``, commit 0b986a8): non-empty fields joined
with ``"\\n\\n"``::

    wiki2019zh         {id,url,title,text}                   text     = text             (text opens with the title)
    news2016zh         {news_id,keywords,desc,title,...}     text     = title \\n content
    baike2018qa        {qid,category,title,desc,answer}      prompt   = title \\n desc;       response = answer
    webtext2019zh      {qid,title,desc,topic,star,content,…} prompt   = title \\n desc;       response = content
    translation2019zh  {english,chinese}                     prompt   = 翻译成中文： \\n english; response = chinese
    coig_translated    translated_instructions.jsonl         prompt   = trans_instruction \\n\\n trans_input;
                                                             response = trans_output
    coig_instruction   leetcode_instructions.jsonl, human_value_alignment_instructions_part1.json
                                                             prompt   = instruction \\n\\n input; response = output
    coig_exam          exam_instructions.jsonl, human_value_alignment_instructions_part2.json
                                                             prompt   = textbox_q_instruction \\n\\n textbox_q_context
                                                                        \\n\\n textbox_question;
                                                             response = textbox_answer \\n\\n textbox_answer_analysis
    coig_counterfactual counterfactural_correction_multi_round_chat/*.json (one conversation per file)
                                                             turns round_N: prompt = prompt; response = response
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

_FIELD = re.compile(r"{([^{}]+)}")


class TemplateError(ValueError):
    """A record does not fit its template; the message names the field."""


@dataclass(frozen=True)
class FieldTemplate:
    """How one record's fields become an example (see the module docstring).

    Args:
        text: Parts of a fully trained text (exclusive with ``prompt``/``response``).
        prompt: Parts of the untrained prompt.
        response: Parts of the trained response.
        separator: Joins the parts kept.
        turns: Key prefix of a conversation's rounds (``"round_"``): each ``<prefix><number>`` value is an object
            rendered with ``prompt``/``response`` as one turn, in numeric order.
        files: File-name patterns a directory path picks up (``wiki_*`` for wiki2019zh's extension-less files).
    """

    text: tuple[str, ...] = ()
    prompt: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    separator: str = "\n"
    turns: str | None = None
    files: tuple[str, ...] = ("*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz")

    def __post_init__(self) -> None:
        for name in ("text", "prompt", "response", "files"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"template {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if bool(self.text) == bool(self.response):
            raise ValueError("a template has either `text` (full loss) or `response` (with an optional `prompt`)")
        if self.turns is not None and self.text:
            raise ValueError("a conversation template (`turns`) renders each turn with `prompt` and `response`")
        for part in self.text + self.prompt + self.response:
            list(string.Formatter().parse(part))  # a malformed part ("{title") fails here, at start

    @classmethod
    def from_dict(cls, value: dict) -> FieldTemplate:
        unknown = set(value) - {"text", "prompt", "response", "separator", "turns", "files"}
        if unknown:
            raise ValueError(f"template keys {sorted(unknown)} are unknown; expected text, prompt, response, "
                             "separator, turns, files")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field the parts name, in order of first use."""
        names = [m for part in self.text + self.prompt + self.response for m in _FIELD.findall(part)]
        return tuple(dict.fromkeys(names))

    @property
    def full_text(self) -> bool:
        return bool(self.text)

    def render(self, record: dict) -> list[tuple[str, str]] | str:
        """The record's text (``str``, a ``text`` template) or its ``(prompt, response)`` turns.

        Raises :class:`TemplateError` naming the field for a missing field, a wrong type or an empty response.
        """
        if self.text:
            text = self._join(self.text, record)
            if not text.strip():
                raise TemplateError(f"empty text: {_blank(self.fields, record)}")
            return text
        if self.turns is None:
            return [self._turn(record)]
        rounds = sorted((int(key[len(self.turns):]), key) for key in record
                        if key.startswith(self.turns) and key[len(self.turns):].isdigit())
        if not rounds:
            raise TemplateError(f"no {self.turns}<N> keys (conversation rounds); the record has {sorted(record)}")
        turns = []
        for _, key in rounds:
            turn = record[key]
            if not isinstance(turn, dict):
                raise TemplateError(f"{key!r} must be an object with {list(self.fields)}, got {_describe(turn)}")
            try:
                turns.append(self._turn(turn))
            except TemplateError as err:
                raise TemplateError(f"{key!r}: {err}") from None
        return turns

    def _turn(self, record: dict) -> tuple[str, str]:
        response = self._join(self.response, record)
        if not response.strip():
            raise TemplateError(f"empty response: {_blank(_names(self.response), record)}")
        prompt = self._join(self.prompt, record)
        if self.prompt and not prompt.strip():
            raise TemplateError(f"empty prompt: {_blank(_names(self.prompt), record)}")
        return prompt, response

    def _join(self, parts: tuple[str, ...], record: dict) -> str:
        kept = []
        for part in parts:
            names = _FIELD.findall(part)
            values = {name: _value(record, name) for name in names}
            if names and not any(v.strip() for v in values.values()):
                continue
            kept.append(_FIELD.sub(lambda m: values[m.group(1)], part))
        return self.separator.join(kept)


def _names(parts: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(m for part in parts for m in _FIELD.findall(part)))


def _blank(names, record: dict) -> str:
    return f"field{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)} " \
           f"{'are' if len(names) > 1 else 'is'} empty"


def _describe(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(type(value), type(value).__name__)


def _value(record: dict, name: str) -> str:
    if name not in record:
        raise TemplateError(f"missing field {name!r}; the record has {sorted(record)}")
    value = record[name]
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TemplateError(f"field {name!r} must be a string, got {_describe(value)}")
    return value if isinstance(value, str) else str(value)


_COIG_JOIN = "\n\n"
_EXAM = FieldTemplate(prompt=("{textbox_q_instruction}", "{textbox_q_context}", "{textbox_question}"),
                      response=("{textbox_answer}", "{textbox_answer_analysis}"), separator=_COIG_JOIN)

TEMPLATES: dict[str, FieldTemplate] = {
    "wiki2019zh": FieldTemplate(text=("{text}",), files=("wiki_*",)),
    "news2016zh": FieldTemplate(text=("{title}", "{content}")),
    "baike2018qa": FieldTemplate(prompt=("{title}", "{desc}"), response=("{answer}",)),
    "webtext2019zh": FieldTemplate(prompt=("{title}", "{desc}"), response=("{content}",)),
    "translation2019zh": FieldTemplate(prompt=("翻译成中文：", "{english}"), response=("{chinese}",)),
    "coig_translated": FieldTemplate(prompt=("{trans_instruction}", "{trans_input}"), response=("{trans_output}",),
                                     separator=_COIG_JOIN),
    "coig_instruction": FieldTemplate(prompt=("{instruction}", "{input}"), response=("{output}",),
                                      separator=_COIG_JOIN),
    "coig_exam": _EXAM,
    "coig_counterfactual": FieldTemplate(prompt=("{prompt}",), response=("{response}",), turns="round_",
                                         separator=_COIG_JOIN, files=("*.json",)),
}
"""The named templates of the public corpora (see the module docstring): ``format: <name>`` in a source."""
