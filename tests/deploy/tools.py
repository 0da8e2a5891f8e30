"""Where the Kubernetes manifests are, how they render, and the checkers the tests run on them.

kubernetes-validate (dev extra) bundles the Kubernetes JSON schemas and works offline. checkov
lives in a virtual environment of its own (.cache/venv-checkov, `scripts/install_checkov.sh`, run
by `make deploy-lint`), since its pins would downgrade the project's packages. kubectl, where
installed, renders the kustomizations too, and the tests check both renderings agree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize import render

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = {"gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu"}
ROUTER = K8S / "router"
MONITORING = K8S / "monitoring"
SERVICE_MONITOR = MONITORING / "servicemonitor.yaml"
ADAPTER_VALUES = MONITORING / "prometheus-adapter-values.yaml"
KUSTOMIZATIONS = {**OVERLAYS, "router": ROUTER}
"""What a user applies: the two overlays, and the router next to either."""
CHECKOV = REPO / ".cache" / "venv-checkov" / "bin" / "checkov"
CRD_KINDS = {"InferencePool", "HTTPRoute", "ServiceMonitor"}
"""Custom resources: no bundled schema; the tests check their references instead."""


def rendered(name: str) -> list[dict[str, Any]]:
    return render(KUSTOMIZATIONS[name])


def the(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str = "server") -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def env_of(container_spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e}


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `apt-get install kubernetes-client` runs this check")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def checkov() -> str:
    if CHECKOV.exists():
        return str(CHECKOV)
    path = shutil.which("checkov")
    if path is None:
        pytest.skip(
            "checkov is not installed: `bash scripts/install_checkov.sh` (run by `make test`)"
        )
    return path
