"""Every route encodes a prompt into the ids training encoded it into (`backtrack.prompts`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from backtrack.checkpoint import CheckpointError, load_checkpoint
from server.loading import ServedModel, load_served_model
from server.settings import Settings
from training.config import DataConfig
from training.data import encode, prompt_encoder
from training.tasks import Problem

PROBLEM = Problem("123+456=", "9750")
USER_TURN = [{"role": "user", "content": PROBLEM.prompt}]
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def record_format(directory, prompt_format: str | None) -> None:
    path = directory / "backtrack.json"
    metadata = json.loads(path.read_text())
    metadata["prompt_format"] = prompt_format
    path.write_text(json.dumps(metadata))


def serve(directory) -> ServedModel:
    return load_served_model(Settings(checkpoint=directory, device="cpu"))


def trained_ids(tokenizer) -> tuple[int, ...]:
    """The prompt ids `make train` (data.prompt_format auto) trains this tokenizer on."""
    return encode(prompt_encoder(DataConfig(), tokenizer), PROBLEM).prompt_ids


@pytest.fixture
def checkpoint_copy(tmp_path, scripted_checkpoint_dir):
    shutil.copytree(scripted_checkpoint_dir, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_a_plain_checkpoint_gets_the_trained_ids_on_every_route(checkpoint_copy):
    record_format(checkpoint_copy, "plain")
    served = serve(checkpoint_copy)
    assert tuple(served.prompts.completion(PROBLEM.prompt)) == trained_ids(served.tokenizer)
    assert tuple(served.prompts.chat(USER_TURN)) == trained_ids(served.tokenizer)
    two_turns = [{"role": "system", "content": "add"}, *USER_TURN]
    assert served.tokenizer.decode(served.prompts.chat(two_turns)) == "add\n123+456="


def test_a_chat_checkpoint_wraps_completion_prompts_as_training_did(checkpoint_copy):
    tokenizer_config = checkpoint_copy / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["chat_template"] = TEMPLATE
    tokenizer_config.write_text(json.dumps(config))
    record_format(checkpoint_copy, "chat")
    served = serve(checkpoint_copy)
    ids = trained_ids(served.tokenizer)
    assert served.tokenizer.decode(ids) == "user: 123+456=\nassistant: "
    assert tuple(served.prompts.completion(PROBLEM.prompt)) == ids
    assert tuple(served.prompts.chat(USER_TURN)) == ids


def test_a_checkpoint_trained_elsewhere_chats_through_its_own_template(checkpoint_copy):
    record_format(checkpoint_copy, None)
    served = serve(checkpoint_copy)
    served.tokenizer.chat_template = TEMPLATE
    assert served.tokenizer.decode(served.prompts.chat(USER_TURN)) == "user: 123+456=\nassistant: "
    assert served.tokenizer.decode(served.prompts.completion(PROBLEM.prompt)) == PROBLEM.prompt


def test_a_chat_format_without_a_template_is_refused_at_load(checkpoint_copy):
    record_format(checkpoint_copy, "chat")
    with pytest.raises(CheckpointError, match=r"prompt_format: .*chat template"):
        load_checkpoint(checkpoint_copy, torch.device("cpu"), torch.float32)
