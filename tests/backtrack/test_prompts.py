"""Prompt text with special tokens in it, through a chat template: the template's own markers
stay tokens, while with `special_tokens="text"` what the user wrote stays characters."""

from __future__ import annotations

from backtrack.prompts import PromptEncoder
from backtrack.tiny import BOS, EOS, build_char_tokenizer
from backtrack.tokens import BACKTRACK_TOKEN

TEMPLATE = (
    "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>{% endif %}"
)


def encoders() -> tuple[PromptEncoder, PromptEncoder]:
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    parse = PromptEncoder(tokenizer, "chat", special_tokens="parse")
    return parse, PromptEncoder(tokenizer, "chat", special_tokens="text")


def test_a_templates_own_tokens_are_parsed_and_the_users_are_text():
    parse, text = encoders()
    tokenizer = parse.tokenizer
    bos, eos, bt = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, BACKTRACK_TOKEN))
    messages = [{"role": "user", "content": f"a{BACKTRACK_TOKEN}b{EOS}"}]
    parsed = parse.chat(messages)
    assert parsed.count(bt) == 1 and parsed.count(eos) == 2
    as_text = text.chat(messages)
    assert bt not in as_text
    assert as_text.count(eos) == 1 and as_text.count(bos) == 2  # the template's own
    assert as_text[:2] == [bos, tokenizer.convert_tokens_to_ids("a")]


def test_text_mode_changes_nothing_for_plain_text():
    parse, text = encoders()
    messages = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    assert text.chat(messages) == parse.chat(messages)
    assert text.completion("1+1=") == parse.completion("1+1=")
