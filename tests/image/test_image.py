"""The CPU image really builds and serves: no registry, no Docker engine.

scripts/build_image_offline.sh bootstraps a Debian bookworm base with debootstrap, imports it
into buildah and builds docker/Dockerfile (VARIANT=cpu) on it with `buildah bud --isolation
chroot`. The server then starts inside the image through the image's own ENTRYPOINT and CMD
(`buildah run --isolation chroot --network host`, sharing the host's loopback) on a small
scripted checkpoint mounted at /models/default, as the image documents. One /generate, one
stream, then SIGTERM: every open stream must end with its `done` event.

Root, minutes of CPU and downloads (Debian packages, PyPI): `make test-image`, never `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clients.sse import iter_events
from tests.server.conftest import (
    EXPECTED_TEXT,
    LOOP_PROMPT,
    PROMPT,
    SCRIPT,
    save_scripted_checkpoint,
)
from tests.serving import free_port

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
SCRIPT_PATH = REPO / "scripts" / "build_image_offline.sh"
WORK = REPO / ".cache" / "image"
IMAGE = "localhost/backtrack-serving:cpu"
BUILD_TIMEOUT = 3600
SHUTDOWN_TIMEOUT = 2


@dataclass
class Built:
    image: str
    report: dict


@pytest.fixture(scope="module")
def built() -> Built:
    if os.geteuid() != 0:
        pytest.skip("building with debootstrap and buildah's chroot isolation needs root")
    result = subprocess.run(
        ["bash", str(SCRIPT_PATH)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "IMAGE": IMAGE, "BACKTRACK_IMAGE_WORK": str(WORK)},
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = json.loads((WORK / "build.json").read_text())
    print(f"\nimage build: {report}")
    return Built(IMAGE, report)


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def container(built) -> Iterator[str]:
    name = buildah("from", "--pull=never", built.image).strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)


def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]


def test_the_image_has_cpu_torch_and_no_cuda(container):
    out = buildah(
        "run",
        "--isolation",
        "chroot",
        container,
        "--",
        "python",
        "-c",
        "import torch; print(torch.__version__, torch.version.cuda)",
    )
    assert out.split() == ["2.13.0+cpu", "None"]
    packages = buildah("run", "--isolation", "chroot", container, "--", "pip", "list")
    assert "nvidia" not in packages.lower()


def test_the_image_runs_as_its_non_root_user(built):
    config = image_config(built.image)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/app/docker/entrypoint.sh"]
    assert config["Cmd"] == ["serve"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = save_scripted_checkpoint(tmp_path_factory.mktemp("image-checkpoint"), SCRIPT)
    for path in [directory, *directory.rglob("*")]:  # readable by the image's uid 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def server_pid(parent: int) -> int | None:
    """The `python -m server` process under `buildah run` (same PID namespace with chroot)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:3] == [b"python", b"-m", b"server"] and descends_from(int(entry.name), parent):
            return int(entry.name)
    return None


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rpartition(")")[2].split()[1])
    return False


def read_stream(url: str, body: dict, started: threading.Event, out: list) -> None:
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=60) as response:
        events = iter_events(response.iter_bytes())
        out.append(next(events))
        started.set()
        out.extend(events)


def test_the_server_starts_through_the_entrypoint_serves_and_drains_on_sigterm(
    built, container, checkpoint, tmp_path
):
    config = image_config(built.image)
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [
        "buildah", "run", "--isolation", "chroot", "--network", "host",
        "--volume", f"{checkpoint}:/models/default:ro",
        "--env", f"BACKTRACK_PORT={port}",
        "--env", "BACKTRACK_HOST=127.0.0.1",
        "--env", f"BACKTRACK_SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT}",
        "--env", "BACKTRACK_MAX_NEW_TOKENS=4000",
        "--env", "OMP_NUM_THREADS=1",
        container, "--", *config["Entrypoint"], *config["Cmd"],
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        deadline = started + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.25)
        print(f"\nhealthy {time.monotonic() - started:.1f} s after buildah run")
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["model_device_type"] == "cpu"

        answer = httpx.post(f"{url}/generate", json={"inputs": PROMPT}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["generated_text"] == EXPECTED_TEXT

        with httpx.stream("POST", f"{url}/generate", json={"inputs": PROMPT, "stream": True},
                          timeout=60) as response:  # fmt: skip
            events = list(iter_events(response.iter_bytes()))
        assert [e.event for e in events].count("backtrack") == 2
        assert events[-1].event == "done" and events[-1].json()["generated_text"] == EXPECTED_TEXT

        short = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 40}, "stream": True}
        long = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
        outputs: list[list] = [[], []]
        flags = [threading.Event(), threading.Event()]
        readers = [
            threading.Thread(target=read_stream, args=(url, body, flag, out))
            for body, flag, out in zip((long, short), flags, outputs, strict=True)
        ]
        for reader in readers:
            reader.start()
        assert all(flag.wait(60) for flag in flags)
        pid = server_pid(process.pid)
        assert pid is not None, "no server process under buildah run"
        os.kill(pid, signal.SIGTERM)  # what `docker stop` sends the entrypoint's exec'd server
        for reader in readers:
            reader.join(60)
        status = process.wait(60)
        # The server ends by re-raising SIGTERM (as uvicorn does; 143 under Docker), which
        # buildah reports as "exited on terminated" and status 1.
        log = log_path.read_text()
        assert status == 0 or (status == 1 and "exited on terminated" in log), log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    long_done, short_done = (out[-1] for out in outputs)
    assert short_done.event == long_done.event == "done"
    assert short_done.json()["finish_reason"] == "length"
    assert long_done.json()["finish_reason"] == "shutdown"
    assert "Traceback" not in log_path.read_text()
    assert shutil.which("buildah")
