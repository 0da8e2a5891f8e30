"""deploy/k8s renders, validates against the Kubernetes schemas, passes checkov, and holds
together: probes on /health, a grace period that covers the server's shutdown, a GPU per
replica, and custom resources that point at objects that exist.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings
from tests.deploy.kustomize import load_documents, render
from tests.deploy.tools import (
    ADAPTER_VALUES,
    CRD_KINDS,
    KUSTOMIZATIONS,
    OVERLAYS,
    SERVICE_MONITOR,
    checkov,
    container,
    env_of,
    kubectl_kustomize,
    rendered,
    the,
)

KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest release still maintained by the big clouds, and the newest schema bundled."""
UVICORN_EXTRA_SECONDS = 5
"""server/__main__.py: uvicorn's graceful shutdown is shutdown_timeout + 5 s."""
GRACE_MARGIN_SECONDS = 5


def identity(obj: dict) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_the_python_rendering_is_what_kubectl_kustomize_renders(name):
    ours = sorted(rendered(name), key=identity)
    theirs = sorted(kubectl_kustomize(KUSTOMIZATIONS[name]), key=identity)
    assert ours == theirs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_object_validates_against_the_kubernetes_schema(name, version):
    objects = rendered(name)
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
    assert {o["kind"] for o in objects} - CRD_KINDS


def test_the_validator_rejects_a_misspelt_field():
    """Strict mode is on: an unknown field (a typo) fails, so the test above can fail."""
    deployment = the(rendered("gpu"), "Deployment")
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_checkov_finds_nothing_unexplained(tmp_path):
    """Every rendered manifest scanned; a finding is allowed only as a skip with its reason."""
    for name in KUSTOMIZATIONS:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered(name)))
    (tmp_path / "servicemonitor.yaml").write_text(SERVICE_MONITOR.read_text())
    result = subprocess.run(
        [
            checkov(),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE"},
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, [(c["check_id"], c["resource"], c["check_name"]) for c in failed]
    assert sum(r["summary"]["passed"] for r in reports) > 100
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    manifests = "".join(p.read_text() for p in tmp_path.glob("*.yaml"))
    for check in skipped:  # each suppression sits in the manifest with a reason after the =
        assert re.search(rf"checkov.io/skip\d+: {check['check_id']}=\w+ \w+", manifests), check


def server_container(overlay: str) -> dict:
    return container(the(rendered(overlay), "Deployment", "backtrack-serving"))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_readiness_liveness_and_startup_probe_health(overlay):
    server = server_container(overlay)
    (port,) = server["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, probe
    assert env_of(server)["BACKTRACK_PORT"] == str(port["containerPort"])
    # The liveness probe restarts a wedged worker only after /health reported it.
    stall = Settings.model_fields["health_stall_timeout"].default
    liveness = server["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= stall


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_grace_period_covers_the_preStop_pause_and_the_servers_shutdown(overlay):
    deployment = the(rendered(overlay), "Deployment", "backtrack-serving")
    server = container(deployment)
    shutdown = float(
        env_of(server).get(
            "BACKTRACK_SHUTDOWN_TIMEOUT", Settings.model_fields["shutdown_timeout"].default
        )
    )
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + shutdown + UVICORN_EXTRA_SECONDS + GRACE_MARGIN_SECONDS
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= needed, f"{grace} s grace < {needed} s the server may take to stop"
    assert grace <= needed + 30  # not so long that a stuck replica lingers for minutes


def test_the_gpu_overlay_asks_one_gpu_per_replica_and_shares_the_checkpoint():
    objects = rendered("gpu")
    server = server_container("gpu")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(server)["BACKTRACK_DEVICE"] == "cuda"
    assert server["image"].endswith(":gpu")
    pvc = the(objects, "PersistentVolumeClaim", "backtrack-models")
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_the_cpu_overlay_needs_no_gpu_and_trains_a_checkpoint_if_none_is_there():
    deployment = the(rendered("cpu"), "Deployment", "backtrack-serving")
    server = container(deployment)
    assert "nvidia.com/gpu" not in json.dumps(deployment)
    assert env_of(server)["BACKTRACK_DEVICE"] == "cpu"
    assert server["image"].endswith(":cpu")
    (trainer,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert "entrypoint.sh train" in trainer["args"][0]
    assert trainer["image"] == server["image"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_checkpoint_volume_is_read_only_for_the_server(overlay):
    server = server_container(overlay)
    (models,) = [m for m in server["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True
    assert env_of(server)["BACKTRACK_CHECKPOINT"].startswith(models["mountPath"] + "/")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_service_and_the_scrape_annotations_reach_the_server(overlay):
    objects = rendered(overlay)
    deployment = the(objects, "Deployment", "backtrack-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = the(objects, "Service", "backtrack-serving")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["sessionAffinity"] == "None"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (port,) = container(deployment)["ports"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    hpa = the(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_service_monitor_selects_the_service_and_its_port():
    (monitor,) = load_documents(SERVICE_MONITOR)
    service = the(rendered("gpu"), "Service", "backtrack-serving")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_inference_pool_selects_the_server_pods_and_its_picker_exists():
    router = rendered("router")
    pool = the(router, "InferencePool")
    deployment = the(rendered("gpu"), "Deployment", "backtrack-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    (target,) = pool["spec"]["targetPorts"]
    assert target["number"] == container(deployment)["ports"][0]["containerPort"]
    picker = pool["spec"]["endpointPickerRef"]
    service = the(router, "Service", picker["name"])
    assert picker["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    epp = the(router, "Deployment", "backtrack-serving-epp")
    args = dict(a.removeprefix("--").partition("=")[::2] for a in container(epp, "epp")["args"])
    assert args["pool-name"] == pool["metadata"]["name"]
    assert args["pool-namespace"] == pool["metadata"]["namespace"]
    route = the(router, "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": "backtrack-serving",
        }
    ]


EPP_V1_0_FLAGS = {
    "grpc-port", "grpc-health-port", "metrics-port", "enable-pprof", "pool-name", "pool-group",
    "pool-namespace", "v", "secure-serving", "health-checking", "cert-path",
    "total-queued-requests-metric", "kv-cache-usage-percentage-metric", "lora-info-metric",
    "refresh-metrics-interval", "refresh-prometheus-metrics-interval",
    "metrics-staleness-threshold", "config-file", "config-text", "model-server-metrics-port",
    "model-server-metrics-path", "model-server-metrics-scheme",
    "model-server-metrics-https-insecure-skip-verify", "ha-enable-leader-election", "zap-encoder",
}  # fmt: skip
"""The flags of the pinned picker, epp:v1.0.0 (cmd/epp/runner/runner.go at that tag): later
releases added others (`--total-running-requests-metric`), which v1.0.0 would refuse to start on."""


def test_the_picker_is_pinned_and_given_only_flags_its_release_has():
    router = rendered("router")
    deployment = the(router, "Deployment", "backtrack-serving-epp")
    epp = container(deployment, "epp")
    assert epp["image"] == "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.0"
    flags = {a.removeprefix("--").partition("=")[0] for a in epp["args"]}
    assert flags <= EPP_V1_0_FLAGS, flags - EPP_V1_0_FLAGS
    # It outlives the streams it routed: as long a grace period as the pool's replicas.
    server = the(rendered("gpu"), "Deployment", "backtrack-serving")
    grace = "terminationGracePeriodSeconds"
    assert (
        deployment["spec"]["template"]["spec"][grace] >= server["spec"]["template"]["spec"][grace]
    )


def test_the_picker_config_is_mounted_where_its_flag_points():
    router = rendered("router")
    epp = container(the(router, "Deployment", "backtrack-serving-epp"), "epp")
    flag = next(a for a in epp["args"] if a.startswith("--config-file="))
    path = Path(flag.partition("=")[2])
    (mount,) = [m for m in epp["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    config_map = the(router, "ConfigMap", "backtrack-serving-epp")
    config = yaml.safe_load(config_map["data"][path.name])
    assert config["kind"] == "EndpointPickerConfig"
    types = {p["type"] for p in config["plugins"]}
    assert {"queue-scorer", "kv-cache-utilization-scorer"} <= types
    assert mount["name"] in {
        v["name"]
        for v in the(router, "Deployment", "backtrack-serving-epp")["spec"]["template"]["spec"][
            "volumes"
        ]
    }


def test_the_adapter_rules_serve_what_the_hpa_asks_for():
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    for overlay in OVERLAYS:
        hpa = the(rendered(overlay), "HorizontalPodAutoscaler")
        asked = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
        assert asked and asked <= served, asked - served
        assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
    for rule in rules:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_renderer_refuses_what_it_does_not_know(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels"):
        render(tmp_path)
