#!/usr/bin/env bash
# The GPU check (`make test-gpu`): the decoder's invariants on CUDA in bf16, the position-addressed
# layout with the compiled step (CUDA graphs), the server on CUDA answering /generate and a
# stream, then the decode benchmark on a ~1B random Llama against the memory-bandwidth bound.
#
# For an air-gapped GPU host where only a CUDA torch (2.11 or newer) and transformers are
# installed: everything else comes from wheels/ (`make wheels` on a connected machine, then copy
# the repository with its wheels/ over). Nothing is downloaded. Under 8 minutes on one GPU.
#
#   bash scripts/test_gpu.sh                        # python3 from PATH, wheels/ beside it
#   PYTHON=/opt/conda/bin/python bash scripts/test_gpu.sh
#   BACKTRACK_TEST_DEVICE=cpu bash scripts/test_gpu.sh   # a dry run on a machine without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-wheels}"
VENV=".venv-gpu"
DEVICE="${BACKTRACK_TEST_DEVICE:-cuda}"

"${PYTHON}" - "${DEVICE}" <<'CHECK'
import sys
import torch, transformers
device = sys.argv[1]
major, minor = (int(part) for part in torch.__version__.split(".")[:2])
print(f"test_gpu: torch {torch.__version__}, transformers {transformers.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("test_gpu: torch sees no CUDA device (BACKTRACK_TEST_DEVICE=cpu for a dry run)")
    if (major, minor) < (2, 11):
        sys.exit(f"test_gpu: torch {torch.__version__} is older than 2.11")
    print(f"test_gpu: {torch.cuda.get_device_name()}")
CHECK

# A virtual environment that sees the host's torch and transformers (a .pth file names the host
# interpreter's site-packages, whether that interpreter is a system, conda or venv one) and adds
# the rest offline.
if [[ ! -x "${VENV}/bin/python" ]]; then
    "${PYTHON}" -m venv "${VENV}"
    echo "*" >"${VENV}/.gitignore"
    SITE="$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "${PYTHON}" -c 'import site, sys; print("\n".join(site.getsitepackages()))' >"${SITE}/host-site-packages.pth"
fi
if ! "${VENV}/bin/python" -c "import fastapi, uvicorn, pydantic_settings, sse_starlette, prometheus_client, httpx, pytest, hypothesis, pytest_timeout" 2>/dev/null; then
    [[ -d "${WHEELS}" ]] || { echo "test_gpu: ${WHEELS}/ is missing: run 'make wheels' on a connected machine" >&2; exit 1; }
    "${VENV}/bin/python" -m pip install --quiet --no-index --find-links "${WHEELS}" -r scripts/gpu-requirements.txt
fi

export BACKTRACK_TEST_DEVICE="${DEVICE}"
timeout 300 "${VENV}/bin/python" -m pytest -m gpu tests/gpu -q -p no:cacheprovider
if [[ "${DEVICE}" == "cuda" ]]; then
    timeout 240 "${VENV}/bin/python" -m benchmarks bench_gpu
fi
