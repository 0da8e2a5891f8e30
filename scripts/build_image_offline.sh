#!/usr/bin/env bash
# Builds the CPU image (docker/Dockerfile, VARIANT=cpu) with no container registry: Debian's
# debootstrap makes a bookworm root file system (minbase, plus Python 3.11 and venv), buildah
# imports it as a local base image, and `buildah bud --isolation chroot` builds the Dockerfile on
# it. Needs root and Debian's package mirror (and PyPI inside the build); installs debootstrap
# and buildah with apt if they are missing.
#
#     sudo bash scripts/build_image_offline.sh          # -> localhost/backtrack-serving:cpu
#
# CPU torch comes from PyTorch's CPU index (the Dockerfile's TORCH_INDEX_URL), pinned to the
# Makefile's version, so the multi-GB CUDA build is never pulled. Where that index cannot be
# reached but the CPU wheel lies on disk (TORCH_WHEEL_DIR, default /opt/wheels), the script
# builds a local index of that wheel and its dependencies and mounts it into the build.
#
# The base image is kept between runs (delete it with `buildah rmi localhost/backtrack-base:bookworm`);
# buildah's layer cache makes a rebuild with unchanged sources quick. Writes the build's wall
# time and the image's size to $WORK/build.json.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${BACKTRACK_IMAGE_WORK:-${ROOT}/.cache/image}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="${BASE_IMAGE:-localhost/backtrack-base:${SUITE}}"
IMAGE="${IMAGE:-localhost/backtrack-serving:cpu}"
TORCH_VERSION="$(sed -n 's/^TORCH_SPEC ?= torch==//p' "${ROOT}/Makefile")"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
PYTHON="${PYTHON:-python3}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-overlay}"

if [ "$(id -u)" -ne 0 ]; then
    echo "build_image_offline.sh: run as root (debootstrap and buildah's chroot isolation need it)" >&2
    exit 1
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v buildah >/dev/null || missing+=(buildah)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "${WORK}"
started=$(date +%s)

# 1. The base image: Debian minbase with the Python the Dockerfile's CPU stage expects
# (`python -m venv`, as python:3.11-slim has it). pip inside it trusts the system CA bundle
# (PIP_CERT), which the build mounts from the host (below). A base made by an older recipe of
# this script is made again.
RECIPE=2
base_seconds=0
if [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "backtrack.base.recipe"}}' \
    "${BASE_IMAGE}" 2>/dev/null)" != "${RECIPE}" ]; then
    buildah rmi --force "${BASE_IMAGE}" >/dev/null 2>&1 || true
    rootfs="${WORK}/rootfs-${SUITE}"
    rm -rf "${rootfs}"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
        "${SUITE}" "${rootfs}" "${MIRROR}"
    chroot "${rootfs}" apt-get clean
    rm -rf "${rootfs}/var/lib/apt/lists/"* "${rootfs}/var/cache/apt/"*.bin "${rootfs}/var/log/"*.log
    tar --numeric-owner -C "${rootfs}" -cf "${WORK}/rootfs-${SUITE}.tar" .
    container=$(buildah from scratch)
    buildah add "${container}" "${WORK}/rootfs-${SUITE}.tar" /
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        --label "backtrack.base.recipe=${RECIPE}" --cmd /bin/bash "${container}"
    buildah commit --rm "${container}" "${BASE_IMAGE}"
    rm -rf "${rootfs}" "${WORK}/rootfs-${SUITE}.tar"
    base_seconds=$(($(date +%s) - started))
fi

# 2. Where CPU torch comes from: PyTorch's CPU index, else the CPU wheel on disk.
build_args=(--build-arg VARIANT=cpu --build-arg "CPU_BASE=${BASE_IMAGE}"
    --build-arg "CUDA_BASE=${BASE_IMAGE}" --build-arg "TORCH_VERSION=${TORCH_VERSION}")
# The host's CA certificates, read-only during the build and not stored in the image: a network
# that intercepts TLS with its own CA (as some CI networks do) works as the host does.
volumes=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
torch_source="${TORCH_INDEX_URL}"
if ! "${PYTHON}" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=10)" \
    "${TORCH_INDEX_URL}" 2>/dev/null; then
    wheel=$(find "${TORCH_WHEEL_DIR}" -maxdepth 1 -name "torch-${TORCH_VERSION}+cpu-cp311-*.whl" | head -n 1)
    if [ -z "${wheel}" ]; then
        echo "build_image_offline.sh: ${TORCH_INDEX_URL} is unreachable and no torch-${TORCH_VERSION}+cpu cp311 wheel is in ${TORCH_WHEEL_DIR}" >&2
        exit 1
    fi
    index="${WORK}/torch-index"
    rm -rf "${index}"
    mkdir -p "${index}/wheels"
    cp "${wheel}" "${index}/wheels/"
    # torch's own dependencies, as wheels for the image's Python (3.11, like the wheel).
    "${PYTHON}" -m pip download --quiet --only-binary=:all: --python-version 3.11 \
        --dest "${index}/wheels" "${wheel}"
    "${PYTHON}" - "${index}" <<'EOF'
"""A PEP 503 simple index (index.html per project) over the wheels in <index>/wheels."""
import re
import sys
from pathlib import Path

index = Path(sys.argv[1])
projects: dict[str, list[str]] = {}
for wheel in sorted((index / "wheels").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel.name)
for name, files in projects.items():
    page = index / "simple" / name
    page.mkdir(parents=True)
    links = "".join(f'<a href="../../wheels/{f}">{f}</a>\n' for f in files)
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
EOF
    volumes+=(--volume "${index}:/torch-index:ro")
    torch_source="file:///torch-index/simple (${wheel##*/})"
    build_args+=(--build-arg TORCH_INDEX_URL=file:///torch-index/simple)
fi
echo "CPU torch ${TORCH_VERSION} from ${torch_source}"

# 3. The image itself, from the repository root (.dockerignore keeps the context small).
build_started=$(date +%s)
buildah bud --isolation chroot --pull=never --layers \
    "${build_args[@]}" "${volumes[@]}" \
    -f "${ROOT}/docker/Dockerfile" -t "${IMAGE}" "${ROOT}"
finished=$(date +%s)

# The size: its layers as stored (uncompressed tars), and buildah's own rounded figure.
buildah inspect --type image "${IMAGE}" >"${WORK}/inspect.json"
"${PYTHON}" - "${WORK}/build.json" "${IMAGE}" "${WORK}/inspect.json" "${base_seconds}" \
    "$((finished - build_started))" "$((finished - started))" "${torch_source}" \
    "$(buildah images --noheading --format '{{.Size}}' "${IMAGE}")" <<'EOF'
import json
import sys

path, image, inspect, base, build, total, torch_source, shown = sys.argv[1:]
with open(inspect) as f:
    manifest = json.loads(json.load(f)["Manifest"])
size = sum(layer["size"] for layer in manifest["layers"])
report = {
    "image": image,
    "size_bytes": size,
    "size_buildah": shown.strip(),
    "layers": len(manifest["layers"]),
    "base_seconds": int(base),
    "build_seconds": int(build),
    "total_seconds": int(total),
    "torch_source": torch_source,
}
with open(path, "w") as f:
    json.dump(report, f, indent=2)
print(json.dumps(report))
EOF
