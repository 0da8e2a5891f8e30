#!/usr/bin/env bash
# Installs what the browser test needs: Debian's Chromium and Playwright's Python package.
# Playwright drives the system Chromium (`executable_path`), so `playwright install` (which
# downloads its own browser) is never run.
# Usage: bash scripts/install_browser.sh [python]
set -euo pipefail

PY="${1:-python3}"

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium
fi

if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet -e ".[browser]"
fi

echo "browser ready: $(command -v chromium), playwright $("$PY" -c 'from importlib.metadata import version; print(version("playwright"))')"
