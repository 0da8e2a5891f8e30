"""Start-up and shutdown of the real process: clear refusals, 503 while loading, SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from backtrack.tiny import EOS, UNK, build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import BACKTRACK_TOKEN
from clients.sse import iter_events
from server.app import create_app
from server.process import REPO_ROOT, free_port, running_server, settings_env
from server.settings import Settings
from tests.server.conftest import LOOP_PROMPT, PROMPT


def start(checkpoint: Path | str, **settings: object) -> subprocess.CompletedProcess:
    """Run `python -m server` to its end (it must refuse to start)."""
    env = settings_env(checkpoint, {"port": 0, **settings})
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def checkpoint_without_backtrack(tmp_path_factory) -> Path:
    """A valid Hugging Face model directory whose tokenizer has no <|BACKTRACK|> token."""
    directory = tmp_path_factory.mktemp("no-backtrack")
    vocab = {t: i for t, i in build_char_tokenizer().get_vocab().items() if t != BACKTRACK_TOKEN}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK)
    tokenizer.save_pretrained(directory)
    build_tiny_llama(tiny_llama_config(len(vocab))).save_pretrained(directory)
    return directory


def test_bad_setting_exits_naming_it(tiny_checkpoint_dir):
    result = start(tiny_checkpoint_dir, max_concurrent_requests="many")
    assert result.returncode == 2
    assert "max_concurrent_requests" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_exits_with_a_clear_message(tmp_path):
    result = start(tmp_path / "nowhere")
    assert result.returncode == 1
    assert "nowhere" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_tokenizer_without_backtrack_token_is_refused(checkpoint_without_backtrack):
    result = start(checkpoint_without_backtrack)
    assert result.returncode == 1
    assert "<|BACKTRACK|>" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_health_is_503_until_the_model_is_loaded(tiny_checkpoint_dir):
    app = create_app(Settings(checkpoint=tiny_checkpoint_dir))  # lifespan not run: not loaded
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        health = await client.get("/health")
        assert health.status_code == 503
        generate = await client.post("/generate", json={"inputs": PROMPT})
        assert generate.status_code == 503
        assert generate.json()["error_type"] == "unavailable"


def read_stream(url: str, body: dict, started: threading.Event, out: list) -> None:
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=30) as response:
        events = iter_events(response.iter_bytes())
        out.append(next(events))
        started.set()
        out.extend(events)


def test_sigterm_finishes_short_streams_and_ends_long_ones(scripted_checkpoint_dir):
    short = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 30}, "stream": True}
    long = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
    with running_server(scripted_checkpoint_dir, shutdown_timeout=2, max_new_tokens=4000) as server:
        outputs: list[list] = [[], []]
        started = [threading.Event(), threading.Event()]
        readers = [
            threading.Thread(target=read_stream, args=(server.url, body, flag, out))
            for body, flag, out in zip((long, short), started, outputs, strict=True)
        ]
        for reader in readers:
            reader.start()
        assert all(flag.wait(30) for flag in started)
        server.process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(30)
        assert server.process.wait(30) in (0, -signal.SIGTERM)
    long_done, short_done = (out[-1] for out in outputs)
    assert short_done.event == long_done.event == "done"
    assert short_done.json()["finish_reason"] == "length"
    assert long_done.json()["finish_reason"] == "shutdown"


def test_an_empty_api_key_stops_start_up_naming_it(tiny_checkpoint_dir):
    result = start(tiny_checkpoint_dir, api_key="")
    assert result.returncode == 2
    assert "api_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_listening_beyond_loopback_without_a_key_warns(scripted_checkpoint_dir):
    with running_server(scripted_checkpoint_dir, host="0.0.0.0") as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert "without an API key" in server.logs()
    with running_server(scripted_checkpoint_dir) as server:
        assert "without an API key" not in server.logs()


def test_sigterm_while_the_checkpoint_loads_exits_within_the_shutdown_timeout(
    scripted_checkpoint_dir, tmp_path
):
    """Loading that never ends (its metadata file is a FIFO nobody writes) must not hold
    the process past SIGTERM."""
    checkpoint = tmp_path / "hanging"
    shutil.copytree(scripted_checkpoint_dir, checkpoint)
    (checkpoint / "backtrack.json").unlink()
    os.mkfifo(checkpoint / "backtrack.json")
    port = free_port()
    env = settings_env(checkpoint, {"port": port, "shutdown_timeout": 2})
    process = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/health", 503)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_status(url: str, status: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} never answered {status}")


def read_openai_stream(url: str, body: dict, started: threading.Event, out: list) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        events = iter_events(response.iter_bytes())
        out.append(next(events).data)
        started.set()
        out.extend(event.data for event in events)


def test_sigterm_gives_a_logprobs_stream_its_final_chunk_and_done(scripted_checkpoint_dir):
    """Each streamed token's log-probabilities are a scoring call on the worker; the drain still
    runs them, so a stream cut by the shutdown ends with its finish chunk and `[DONE]`, and a
    non-streamed logprobs request admitted before SIGTERM gets its answer, not a 503."""
    streamed = {
        "prompt": LOOP_PROMPT,
        "max_tokens": 4000,
        "logprobs": 1,
        "stream": True,
    }
    with running_server(scripted_checkpoint_dir, shutdown_timeout=2, max_new_tokens=4000) as server:
        out: list[str] = []
        started = threading.Event()
        reader = threading.Thread(
            target=read_openai_stream, args=(server.url, streamed, started, out)
        )
        reader.start()
        assert started.wait(30)
        answers: list[httpx.Response] = []
        plain = {"prompt": LOOP_PROMPT, "max_tokens": 40, "logprobs": 1}
        poster = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{server.url}/v1/completions", json=plain, timeout=30)
            )
        )
        poster.start()
        time.sleep(0.3)  # the plain request is admitted before the signal
        server.process.send_signal(signal.SIGTERM)
        reader.join(30)
        poster.join(30)
        assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert out[-1] == "[DONE]"
    assert '"finish_reason":"length"' in out[-2].replace(" ", "")
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    assert answers[0].json()["choices"][0]["logprobs"]["tokens"]
