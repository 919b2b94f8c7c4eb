"""What a corpus record becomes before tokenization: an :class:`Example` made of :class:`Segment` s.

Readers (``panda.data.sources``) turn every corpus format into examples; the tokenizer stage
(``panda.data.tokenize``) turns segments into token ids and builds the loss mask from the segment
boundaries themselves. Keeping the prompt/response split as *text segments* up to that point is what makes
the mask exact: nothing downstream has to guess where the prompt ended.

    plain text (full loss)       [Segment(text, trained=True)]
    instruction (conditional)    [Segment(prompt, trained=False), Segment(response, trained=True)]
    conversation                 [user, assistant, user, assistant, ...] alternating False/True
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A piece of an example's text.

    Args:
        text: The text, exactly as read from the corpus (never rewritten).
        trained: Whether this segment's tokens get loss. A trained segment is a response (or plain text) and is
            closed by EOS, which is trained too.
    """

    text: str
    trained: bool


@dataclass(frozen=True)
class Example:
    """One training document.

    Args:
        segments: The document's text pieces in order.
        source: Name of the corpus source it came from (as declared in the data config).
        origin: Where it came from, ``"path:line"`` (JSON lines) or ``"path:[index]"`` (JSON arrays), for error
            messages and previews.
    """

    segments: tuple[Segment, ...]
    source: str = ""
    origin: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)
