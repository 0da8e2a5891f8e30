"""Plain transformers backtracks with a checkpoint's own `custom_generate/generate.py`.

The scripted checkpoint (tests/server/conftest.py) greedily writes `3`, deletes it, writes `2`,
`x`, deletes it, then ` ok`: `from_pretrained(..., trust_remote_code=True).generate` must take
the same decisions as the server's decoder, token for token and deletion for deletion; without
`trust_remote_code` transformers' own generate runs and prints BT as text.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from backtrack import standalone_generate
from backtrack.checkpoint import load_checkpoint, load_metadata, save_metadata
from backtrack.custom_generate import CUSTOM_GENERATE_FILE, standalone_source
from backtrack.params import MODES, POLICIES, GenerationParams
from backtrack.tiny import EOS, save_tiny_checkpoint
from backtrack.tokens import BACKTRACK_TOKEN
from tests.backtrack.conftest import logit_bias
from tests.server.conftest import (
    EXPECTED_REMOVED,
    EXPECTED_TEXT,
    PROMPT,
    SCRIPT,
    save_scripted_checkpoint,
)
from tests.traces import custom_trace, decoder_trace, load_with_custom_generate

BT = BACKTRACK_TOKEN


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory) -> Path:
    return save_scripted_checkpoint(tmp_path_factory.mktemp("scripted"), SCRIPT)


@pytest.fixture(scope="module")
def scripted(scripted_dir):
    return load_checkpoint(scripted_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def scripted_model(scripted_dir):
    return load_with_custom_generate(scripted_dir)


def scripted_with(tmp_path: Path, script: dict[str, list[str]], **decoding) -> Path:
    directory = save_scripted_checkpoint(tmp_path / "checkpoint", script)
    if decoding:
        save_metadata(directory, replace(load_metadata(directory), decoding=decoding))
    return directory


def text_of(directory: Path, prompt: str = PROMPT, **params) -> str:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = load_with_custom_generate(directory)
    output = model.generate(**tokenizer(prompt, return_tensors="pt"), **params)
    return tokenizer.decode(output[0][len(tokenizer(prompt).input_ids) :])


def test_the_standalone_file_imports_only_torch_transformers_and_the_standard_library():
    tree = ast.parse(standalone_source())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    roots = {name.split(".")[0] for name in imported} - sys.stdlib_module_names
    assert roots == {"torch", "transformers"}


def test_every_checkpoint_carries_the_standalone_generate(scripted_dir, tiny_checkpoint_dir):
    for directory in (scripted_dir, tiny_checkpoint_dir):
        assert (directory / CUSTOM_GENERATE_FILE).read_bytes() == standalone_source()
        assert "transformers" in (directory / "custom_generate/requirements.txt").read_text()


def test_greedy_generate_deletes_where_the_servers_decoder_does(scripted, scripted_model):
    prompt = scripted.tokenizer(PROMPT).input_ids
    expected = decoder_trace(scripted, prompt, max_new_tokens=10)
    actual = custom_trace(scripted_model, prompt, max_new_tokens=10)
    assert actual == expected
    removed = [token for kind, _, token in actual.edits if kind == "backtrack"]
    assert scripted.tokenizer.convert_ids_to_tokens(removed) == EXPECTED_REMOVED
    assert scripted.tokenizer.decode(actual.sequence[len(prompt) :]) == EXPECTED_TEXT


def test_generate_returns_the_prompt_and_the_final_text(scripted_dir, scripted_model):
    tokenizer = AutoTokenizer.from_pretrained(scripted_dir)
    output = scripted_model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=10)
    assert tokenizer.decode(output[0]) == PROMPT + EXPECTED_TEXT
    assert tokenizer.convert_tokens_to_ids(BT) not in output[0].tolist()


def test_without_trust_remote_code_transformers_own_generate_prints_bt(scripted_dir):
    tokenizer = AutoTokenizer.from_pretrained(scripted_dir)
    model = AutoModelForCausalLM.from_pretrained(scripted_dir)
    output = model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=10)
    assert tokenizer.decode(output[0]) == f"{PROMPT}3{BT}{EOS}"


def test_the_text_generation_pipeline_backtracks(scripted_dir):
    generator = pipeline("text-generation", model=str(scripted_dir), trust_remote_code=True)
    assert generator(PROMPT, max_new_tokens=10) == [{"generated_text": PROMPT + EXPECTED_TEXT}]
    batched = generator([PROMPT, "zz"], max_new_tokens=4, batch_size=2)
    assert batched == [[{"generated_text": PROMPT + EXPECTED_TEXT}], [{"generated_text": "zzzzzz"}]]


def test_rows_of_a_padded_batch_decode_as_alone(scripted_dir, scripted_model):
    tokenizer = AutoTokenizer.from_pretrained(scripted_dir, padding_side="left")
    batch = tokenizer([PROMPT, "zz"], return_tensors="pt", padding=True)
    output = scripted_model.generate(**batch, max_new_tokens=6)
    assert tokenizer.batch_decode(output, skip_special_tokens=True) == [
        PROMPT + EXPECTED_TEXT,
        "zz" + "z" * 6,
    ]


def test_a_spent_budget_turns_backtracking_off_and_decoding_goes_on(tmp_path):
    directory = scripted_with(tmp_path, {"=": ["3", "2"], "3": [BT], "2": ["x"], "x": [BT, "y"]})
    assert text_of(directory, max_new_tokens=10) == "2"  # "x" deleted too: "2" has no second
    assert text_of(directory, max_new_tokens=10, max_backtracks=1) == "2xy"
    assert text_of(directory, max_new_tokens=10, max_backtracks=0) == "3"


def test_barring_eos_does_not_hand_its_probability_to_bt(tmp_path):
    # after "a" the model prefers EOS, then BT: barred EOS must not make BT the choice
    directory = scripted_with(tmp_path, {"=": ["a"], "a": [EOS, BT, "b"]})
    assert text_of(directory, max_new_tokens=10) == "a"
    assert text_of(directory, max_new_tokens=10, min_tokens=2) == "ab"
    assert text_of(directory, max_new_tokens=10, min_new_tokens=2) == "ab"
    assert text_of(directory, max_new_tokens=3, ignore_eos=True).startswith("ab")


def test_the_checkpoints_decoding_settings_are_the_defaults(tmp_path):
    directory = scripted_with(tmp_path, SCRIPT, backtrack_policy="never")
    assert text_of(directory, max_new_tokens=10) == "3"
    assert text_of(directory, max_new_tokens=10, backtrack_policy="argmax") == EXPECTED_TEXT


def test_keep_mode_feeds_bt_as_the_servers_decoder_does(scripted, scripted_model):
    # BT stays in the context; the scripted model answers BT with EOS
    prompt = scripted.tokenizer(PROMPT).input_ids
    actual = custom_trace(scripted_model, prompt, max_new_tokens=10, mode="keep")
    assert actual == decoder_trace(scripted, prompt, max_new_tokens=10, mode="keep")
    assert actual.deletions == 1 and actual.sequence == prompt


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"num_beams": 2}, "num_beams"),
        ({"streamer": object()}, "streamer"),
        ({"output_scores": True}, "output_scores"),
        ({"backtrack_policy": "maybe"}, "backtrack_policy"),
        ({"backtrack_threshold": 1.5}, "backtrack_threshold"),
        ({"max_backtrack_depth": 0}, "max_backtrack_depth"),
    ],
)
def test_what_it_cannot_honour_is_refused_by_name(scripted_model, params, named):
    with pytest.raises(ValueError, match=named):
        scripted_model.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=2, **params)


def test_its_defaults_and_choices_are_the_servers():
    fields = GenerationParams.model_fields
    defaults = standalone_generate.Settings(backtrack_id=0, eos_ids=set())
    shared = ("ignore_eos", "do_sample", "temperature", "top_k", "top_p", "min_p")
    for name in (*standalone_generate.DECODING, *shared):
        assert getattr(defaults, name) == fields[name].default, name
    limits = (fields["max_new_tokens"].default, fields["min_tokens"].default)
    assert defaults.limits(prompt_length=3) == limits
    assert (standalone_generate.MODES, standalone_generate.POLICIES) == (MODES, POLICIES)


BLOCKER = """
import importlib.abc, sys
PROJECT = {"backtrack", "server", "training", "clients", "benchmarks", "tests"}
class NotHere(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT:
            raise ImportError(f"{name} is not installed on this machine")
sys.meta_path.insert(0, NotHere())
"""
ELSEWHERE = """
import json, sys, torch
try:
    import backtrack
    sys.exit("the project is importable: the test proves nothing")
except ImportError:
    pass
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("checkpoint", trust_remote_code=True)
output = model.generate(input_ids=torch.tensor([PROMPT]), max_new_tokens=10)
print(json.dumps(output[0].tolist()))
"""


def test_the_custom_generate_runs_where_the_project_is_not_installed(
    scripted, scripted_dir, tmp_path
):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    shutil.copytree(scripted_dir, tmp_path / "checkpoint")  # a copy on "another machine"
    prompt = scripted.tokenizer(PROMPT).input_ids
    code = textwrap.dedent(ELSEWHERE).replace("PROMPT", json.dumps(prompt))
    env = {
        "PYTHONPATH": str(tmp_path / "site"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (
        json.loads(result.stdout.splitlines()[-1])
        == decoder_trace(scripted, prompt, max_new_tokens=10).sequence
    )


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("random")
    save_tiny_checkpoint(str(directory))
    return directory


@pytest.fixture(scope="module")
def random_pair(random_dir):
    loaded = load_checkpoint(random_dir, torch.device("cpu"), torch.float32)
    return loaded, load_with_custom_generate(random_dir)


ALPHABET = "0123456789+=abcxyz "


SAMPLING = st.fixed_dictionaries(
    {
        "do_sample": st.just(True),
        "seed": st.integers(0, 2**32),
        "temperature": st.sampled_from([0.7, 1.0, 1.5]),
        "top_k": st.sampled_from([None, 5]),
        "top_p": st.sampled_from([None, 0.9]),
    }
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    prompt=st.text(alphabet=ALPHABET, min_size=1, max_size=12),
    bias=st.sampled_from([0.0, 3.0, 5.0]),
    params=st.fixed_dictionaries(
        {
            "max_new_tokens": st.integers(1, 12),
            "max_backtrack_depth": st.integers(1, 4),
            "mode": st.sampled_from(MODES),
            "backtrack_policy": st.sampled_from(["argmax", "threshold", "never"]),
            "backtrack_threshold": st.sampled_from([0.005, 0.02, 0.1]),
            "repetition_penalty": st.sampled_from([None, 1.3]),
        }
    ),
    sampling=st.one_of(st.just({}), SAMPLING),
)
def test_decoding_agrees_with_the_projects_decoder(random_pair, prompt, bias, params, sampling):
    """Greedy, and seeded sampling too: the same draws from the same generator."""
    loaded, model = random_pair
    ids = loaded.tokenizer(prompt).input_ids
    params = {**params, **sampling, "max_backtracks": 64}
    with logit_bias(loaded.model, loaded.backtrack_id, bias):
        expected = decoder_trace(loaded, ids, **params)
    assume(expected.deletions < 64)  # a spent budget is the case above, on its own
    with logit_bias(model, loaded.backtrack_id, bias):
        actual = custom_trace(model, ids, **params)
    assert actual == expected
