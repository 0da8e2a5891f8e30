"""Per-token text for a stream whose tokens can be popped again.

Decoding one token alone breaks tokenizers that merge bytes or strip leading spaces, so each
token's text is the difference between decoding a short window with and without it (TGI's
approach). Texts are kept per visible token so a pop returns exactly the text that was shown.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

WINDOW = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.texts: list[str] = []

    def push(self, token_id: int) -> str:
        """Append a token and return the text it adds to the visible output."""
        window = self.ids[-WINDOW:]
        before = self._decode(window)
        after = self._decode([*window, token_id])
        text = after[len(before) :] if after.startswith(before) else after
        self.ids.append(token_id)
        self.texts.append(text)
        return text

    def pop(self) -> tuple[int, str]:
        """Remove the last token; return its id and the text it had added."""
        return self.ids.pop(), self.texts.pop()

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)
