"""The served model's prompt rendering: the checkpoint's chat template, or a plain transcript."""

from __future__ import annotations

import pytest

from server.loading import ServedModel, load_served_model
from server.settings import Settings

MESSAGES = [{"role": "system", "content": "add"}, {"role": "user", "content": "1+1="}]


@pytest.fixture
def served(scripted_checkpoint_dir) -> ServedModel:
    return load_served_model(Settings(checkpoint=scripted_checkpoint_dir, device="cpu"))


def test_without_a_template_the_prompt_is_a_transcript(served):
    assert not served.has_chat_template
    assert served.chat_prompt(MESSAGES) == "system: add\nuser: 1+1=\nassistant: "


def test_the_checkpoint_template_is_used_when_present(served):
    served.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert served.has_chat_template
    assert served.chat_prompt(MESSAGES) == "<system>add<user>1+1=<assistant>"
