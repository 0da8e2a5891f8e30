#!/usr/bin/env bash
# Installs checkov (the Kubernetes manifest security scanner) into .cache/venv-checkov, a virtual
# environment of its own: checkov pins old versions of packaging, networkx and python-dateutil
# that would downgrade the project's own (torch and transformers use them).
#
#     bash scripts/install_checkov.sh [PYTHON]
#
# Idempotent: a finished install leaves .cache/venv-checkov/.installed naming the pinned version,
# and a second run with the same pin returns at once. tests/deploy finds checkov there.
set -euo pipefail

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${ROOT}/.cache/venv-checkov"
PYTHON="${1:-python3}"
WANT="checkov==${CHECKOV_VERSION}"

if [ -f "${VENV}/.installed" ] && [ "$(cat "${VENV}/.installed")" = "${WANT}" ]; then
    exit 0
fi
rm -rf "${VENV}"
mkdir -p "$(dirname "${VENV}")"
"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet "${WANT}"
"${VENV}/bin/checkov" --version
echo "${WANT}" > "${VENV}/.installed"
