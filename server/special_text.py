"""Special tokens written inside prompt text: refused, parsed, or kept as plain characters.

A user who types `<|BACKTRACK|>` or `</s>` in a prompt would, with the tokenizer's defaults, send
the control token itself: a backtrack the model never chose, an end of text, a forged chat turn.
`special_tokens_in_prompts` decides what such text becomes:

* `refuse` (default): 422 naming the field, as OpenAI's tiktoken refuses special tokens in text
  unless allowed (`disallowed_special`). Send token ids to give control tokens on purpose.
* `text`: encoded as its plain characters, never as the token.
* `parse`: the token itself, as vLLM and TGI parse them (for clients that render their own chat
  template into a completion prompt).

Only what the user wrote is checked: message contents, completion prompts and `/generate`
inputs. A chat template's own markers (`<|im_start|>`) are always parsed, and token-id prompts
are ids already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from backtrack.params import InvalidParameter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SpecialTokensInPrompts = Literal["refuse", "parse", "text"]


def special_token_texts(tokenizer: PreTrainedTokenizerBase, extra: str = "") -> list[str]:
    """Every special token's text (EOS, BOS, pad, the backtrack token `extra`, a template's
    markers), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    texts = set(tokenizer.all_special_tokens) | {extra}
    texts |= {token.content for token in added.values() if getattr(token, "special", False)}
    return sorted((text for text in texts if text), key=len, reverse=True)


def first_special_token(text: str, specials: list[str]) -> str | None:
    """The special token written earliest in `text`, or None when it holds none."""
    found = [(text.find(special), special) for special in specials if special in text]
    return min(found)[1] if found else None


def refuse_special_tokens(texts: dict[str, str], specials: list[str]) -> None:
    """422 for the first field (field name -> the text the user wrote) holding a special token."""
    for field, text in texts.items():
        special = first_special_token(text, specials)
        if special is not None:
            raise InvalidParameter(
                field,
                f"holds the special token {special!r}; this server does not read special tokens "
                "in prompt text (special_tokens_in_prompts refuse): remove it, or send token ids",
            )
