"""One prompt encoder for training, evaluation and serving, so a served prompt is a trained one.

A checkpoint records in `backtrack.json` how its training prompts were written (`prompt_format`):

* `plain`: the prompt text as given, through the tokenizer with its special tokens (BOS). The
  completion routes (`/generate`, `/`, `/v1/completions`) send the text so; the chat route joins
  the messages' contents with newlines, so one user message is exactly the trained prompt.
* `chat`: the text as one user turn of the tokenizer's chat template, with the assistant's
  generation prompt. The chat route renders its messages with that template; the completion
  routes wrap their text as one user turn, the way training did.

Special tokens written inside prompt text (`<|BACKTRACK|>`, EOS, `<|im_start|>`) are parsed as
those tokens by default, as training and chat templates need (`special_tokens="parse"`). With
`special_tokens="text"` the text a user wrote is encoded as its plain characters, so it can never
become a control token; a chat template's own special tokens are still parsed (the user's
contents are tokenised apart from the template around them).

`auto` (a training setting, never recorded) picks `chat` for a tokenizer with a chat template and
`plain` otherwise. A checkpoint without the field (trained elsewhere) is served as `plain` on the
completion routes and through its chat template, when it has one, on the chat route.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

PromptFormat = Literal["plain", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("plain", "chat")
SpecialTokens = Literal["parse", "text"]


def resolve_format(requested: str, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """`auto` becomes `chat` when the tokenizer has a chat template, else `plain`."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "auto":
        return "chat" if has_template else "plain"
    if requested == "plain":
        return "plain"
    if requested != "chat":
        raise ValueError(f"prompt format must be auto, plain or chat, got {requested!r}")
    if not has_template:
        raise ValueError("prompt format chat needs a tokenizer with a chat template")
    return "chat"


@dataclass(frozen=True)
class PromptEncoder:
    """Prompt text or chat messages to the token ids the model was trained on."""

    tokenizer: PreTrainedTokenizerBase
    format: PromptFormat = "plain"
    chat_uses_template: bool = False
    """For a `plain` checkpoint trained elsewhere: render chat with its own template."""
    special_tokens: SpecialTokens = "parse"
    """`text`: special tokens written in the prompt's text are encoded as plain characters."""

    def completion(self, text: str) -> list[int]:
        """A completion prompt (and every training and evaluation prompt)."""
        if self.format == "chat":
            return self._template([{"role": "user", "content": text}])
        as_text = self.special_tokens == "text"
        return list(self.tokenizer(text, split_special_tokens=as_text)["input_ids"])

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation, ending with the assistant's turn to answer."""
        if self.format == "chat" or self.chat_uses_template:
            return self._template(messages)
        return self.completion("\n".join(message["content"] for message in messages))

    def _template(self, messages: list[dict[str, str]]) -> list[int]:
        # a rendered template holds its own special tokens (BOS): none are added again
        if self.special_tokens == "text":
            return self._template_with_text_contents(messages)
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def _template_with_text_contents(self, messages: list[dict[str, str]]) -> list[int]:
        """The template rendered around markers standing for each content, then tokenised in
        pieces: the template's text with its special tokens parsed, each content as characters."""
        marker = f"\ue000{secrets.token_hex(8)}\ue000"
        marked = [{**m, "content": f"{marker}{i}{marker}"} for i, m in enumerate(messages)]
        text = str(
            self.tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
        )
        ids: list[int] = []
        for number, piece in enumerate(text.split(marker)):
            content = number % 2 == 1
            if content:
                piece = messages[int(piece)]["content"]
            encoded = self.tokenizer(piece, add_special_tokens=False, split_special_tokens=content)
            ids.extend(encoded["input_ids"])
        return ids


def encoder_for_checkpoint(
    tokenizer: PreTrainedTokenizerBase,
    recorded: str | None,
    special_tokens: SpecialTokens = "parse",
) -> PromptEncoder:
    """The encoder a checkpoint's recorded `prompt_format` asks for (None: trained elsewhere)."""
    if recorded is None:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        return PromptEncoder(tokenizer, "plain", has_template, special_tokens)
    return PromptEncoder(tokenizer, resolve_format(recorded, tokenizer), False, special_tokens)
