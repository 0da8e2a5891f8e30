"""Per-token text for a stream whose tokens can be popped again.

Decoding one token alone breaks tokenizers that merge bytes or strip leading spaces, so a
token's text is the difference between decoding a short window with and without it (TGI's
prefix/read offsets). A token that ends inside a multi-byte character adds no text; the token
that completes the character carries all of it. The offsets are saved per token, so a pop
returns exactly the text that token had added and restores the state before it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.texts: list[str] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._saved_offsets: list[tuple[int, int]] = []
        self.length = 0
        """Characters of visible text, kept so the hot path never joins the whole text."""

    def push(self, token_id: int) -> str:
        """Append a token and return the text it adds to the visible output."""
        self._saved_offsets.append((self._prefix_offset, self._read_offset))
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix_offset : self._read_offset])
        after = self._decode(self.ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith(INCOMPLETE):
            text = after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        else:
            text = ""
        self.texts.append(text)
        self.length += len(text)
        return text

    def pop(self) -> tuple[int, str]:
        """Remove the last token; return its id and the text it had added."""
        self._prefix_offset, self._read_offset = self._saved_offsets.pop()
        text = self.texts.pop()
        self.length -= len(text)
        return self.ids.pop(), text

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def tail(self, characters: int) -> str:
        """At least the last `characters` characters of the text (whole tokens), or all of it."""
        pieces: list[str] = []
        collected = 0
        for text in reversed(self.texts):
            if collected >= characters:
                break
            pieces.append(text)
            collected += len(text)
        return "".join(reversed(pieces))

    def _decode(self, ids: list[int]) -> str:
        return decoded(self._tokenizer, ids, skip_special_tokens=True)


def decoded(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], skip_special_tokens: bool = False
) -> str:
    """The text of `ids` (a list of ids always decodes to one string)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"the tokenizer decoded a list of ids to {type(text).__name__}")
    return text
