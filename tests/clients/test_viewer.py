"""`backtrack-view`, the installed console command, against the real server.

Piped, it prints one line per event; on a terminal (a real pseudo-terminal here) it draws the
text live, strikes the deleted tokens, erases them and ends with a summary line.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

from clients.render import STRIKE
from tests.clients.conftest import API_KEY
from tests.clients.screen import Screen


def viewer_command() -> list[str]:
    installed = Path(sys.executable).parent / "backtrack-view"
    if installed.exists():
        return [str(installed)]
    found = shutil.which("backtrack-view")
    return [found] if found else [sys.executable, "-m", "clients.viewer"]


def viewer_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "BACKTRACK_API_KEY": API_KEY, **extra}


def test_piped_output_is_one_line_per_event(live_server):
    result = subprocess.run(
        [*viewer_command(), "1+1=", "--url", live_server.url, "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        env=viewer_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 2)[:2] for line in lines[1:6]] == [
        ["token", "0"],
        ["backtrack", "0"],
        ["token", "0"],
        ["token", "1"],
        ["backtrack", "1"],
    ]
    assert lines[2] == 'backtrack 0 "3" 1'
    assert 'done eos "2 ok"' in lines
    assert lines[-1].startswith("summary 4 tokens (7 sampled), 2 backtracks,")


def test_on_a_terminal_deletions_are_struck_then_erased(live_server):
    command = [*viewer_command(), "1+1=", "--url", live_server.url, "--strike-seconds", "0.01"]
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=viewer_env(COLUMNS="40", LINES="20"),
    )
    os.close(terminal)
    output = read_all(controller)
    assert process.wait(timeout=60) == 0, output
    assert f"{STRIKE}3" in output and f"{STRIKE}x" in output
    screen = Screen(40).feed(output)
    assert screen.lines()[0] == "1+1=2 ok"
    assert screen.lines()[1].startswith("4 tokens (7 sampled), 2 backtracks,")
    assert screen.struck_text() == ""


def test_an_unreachable_server_exits_with_an_error():
    result = subprocess.run(
        [*viewer_command(), "1+1=", "--url", "http://127.0.0.1:9", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=viewer_env(),
        timeout=60,
    )
    assert result.returncode == 1
    assert "error: connection failed" in result.stderr


def read_all(descriptor: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # the other end closed: Linux reports EIO
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(descriptor)
    return b"".join(chunks).decode("utf-8", errors="replace")
