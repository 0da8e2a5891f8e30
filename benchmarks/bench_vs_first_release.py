"""One stream: this server against the first release's one-request-at-a-time server.

    python -m benchmarks bench_vs_first_release

The first release (commit `FIRST_RELEASE`, checked out into a scratch git worktree) stepped each
request with its own forward; this server batches every running request into one forward per
step. Batching must not cost a lone stream its speed (goal: >= 0.95x). Same random 4x512
checkpoint, same OpenAI streaming request (greedy, 96 tokens), both servers running, requests
alternated between them so both see the same machine load. Needs the repository's git history.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.bench_http import save_checkpoint
from clients.sse import iter_events
from server.process import ServerHandle, free_port, running_server, wait_healthy

RUN_BY_DEFAULT = False
"""Needs git history and a second server: run it by name."""
FIRST_RELEASE = "f7b0d77"
TOKENS = 96
ROUNDS = 7
THREADS = "2"
REPO = Path(__file__).resolve().parent.parent


def stream_rate(url: str) -> tuple[float, int]:
    """Tokens/s of one streamed completion, and the number of token chunks it sent."""
    body = {
        "prompt": "123+456=",
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
        "hold_back_deletable": False,
    }
    start, chunks = time.perf_counter(), 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        for message in iter_events(response.iter_bytes()):
            chunks += message.data.startswith("{")
    return chunks / (time.perf_counter() - start), chunks


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-first-release-") as scratch:
        checkpoint = save_checkpoint(Path(scratch) / "checkpoint")
        old_tree = Path(scratch) / "first-release"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), FIRST_RELEASE],
            check=True,
            capture_output=True,
        )
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS=THREADS)
        command = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint)]
        log_path = Path(scratch) / "first-release.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [*command, "--port", str(port), "--dtype", "float32"],
                cwd=old_tree,  # its own packages shadow this checkout's
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        old = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path)
        old_url = old.url
        try:
            wait_healthy(old, timeout=120)
            with running_server(checkpoint, env={"OMP_NUM_THREADS": THREADS}) as new:
                stream_rate(new.url), stream_rate(old_url)  # warm-up
                ours, theirs = [], []
                for _ in range(ROUNDS):
                    ours.append(stream_rate(new.url))
                    theirs.append(stream_rate(old_url))
        finally:
            old.terminate()
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)],
                check=False,
                capture_output=True,
            )
    new_rate = statistics.median(rate for rate, _ in ours)
    old_rate = statistics.median(rate for rate, _ in theirs)
    return {
        "first_release": FIRST_RELEASE,
        "tokens_per_stream": TOKENS,
        "threads": int(THREADS),
        "chunks_per_stream": sorted({chunks for _, chunks in ours + theirs}),
        "this_server_tokens_per_s": round(new_rate, 1),
        "first_release_tokens_per_s": round(old_rate, 1),
        "one_stream_vs_first_release": round(new_rate / old_rate, 3),
    }
