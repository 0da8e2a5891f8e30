"""What reaches a replica on Kubernetes, and with what: the pod never runs without its API key,
the NetworkPolicies let in only the gateway, Prometheus and the endpoint picker, and the gateway
routes only the generation routes the server has, never /metrics, /info or the docs.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from server.app import create_app
from server.settings import Settings
from tests.deploy.tools import OVERLAYS, REPO, container, env_of, rendered, the
from tests.deploy.traffic import Caller, policy_admits, route_admits, selects

DOCS = REPO / "docs" / "deployment.md"
GATEWAY_POD = {"app.kubernetes.io/name": "envoy"}
"""A gateway proxy (Envoy Gateway's), in a namespace of its own."""
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
"""The label the Prometheus Operator and the community chart give Prometheus's pods."""
GATEWAY_NAMESPACE_LABEL = {"backtrack-serving/gateway": "true"}
PROMETHEUS_NAMESPACE_LABEL = {"backtrack-serving/prometheus": "true"}
"""What the user labels the gateway's and Prometheus's namespaces with (docs/deployment.md)."""

OPERATOR_ROUTES = {
    ("GET", "/health"),  # the kubelet probes the pod itself
    ("GET", "/metrics"),  # Prometheus scrapes the pods
    ("GET", "/info"),
    ("GET", "/"),  # the web page (it reads /info)
    ("GET", "/static/index.html"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
}
"""Reached with `kubectl port-forward`, never through the gateway."""
ROUTED_BEFORE_SERVED = {("POST", "/v1/responses")}
"""OpenAI's Responses API: routed whether or not this build of the server serves it (404 if not)."""


def server_routes() -> set[tuple[str, str]]:
    """Every (method, path) of the server's OpenAPI schema: each API route it has."""
    app = create_app(Settings(checkpoint=Path("unused")))  # routes only: nothing is loaded
    schema = app.openapi()["paths"]
    return {(method.upper(), path) for path, operations in schema.items() for method in operations}


def key_source(overlay: str) -> dict:
    """The Secret volume that holds the file `BACKTRACK_API_KEY_FILE` names."""
    deployment = server_deployment(overlay)
    server = container(deployment)
    path = Path(env_of(server)["BACKTRACK_API_KEY_FILE"])
    (mount,) = [m for m in server["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == path.name]
    return {**volume["secret"], "key": item["key"]}


def server_deployment(overlay: str) -> dict:
    return the(rendered(overlay), "Deployment", "backtrack-serving")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_pod_does_not_start_without_its_api_key(overlay):
    """A required Secret volume: no Secret (or no `api-key` in it), no container, no open server;
    and the key never in an environment variable."""
    reference = key_source(overlay)
    assert (reference["secretName"], reference["key"]) == ("backtrack-serving", "api-key")
    assert reference.get("optional", False) is False
    names = {e["name"] for e in container(server_deployment(overlay))["env"]}
    assert "BACKTRACK_API_KEY" not in names
    # The key is the user's, never in the manifests.
    assert not [o for o in rendered(overlay) if o["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_pod_listens_beyond_loopback_only_because_the_key_is_required(overlay):
    """0.0.0.0 lets the Service in; it is safe only with the key required (the pair stays)."""
    host = env_of(container(server_deployment(overlay)))["BACKTRACK_HOST"]
    if not ipaddress.ip_address(host).is_loopback:
        assert key_source(overlay).get("optional", False) is False, host
    assert host == "0.0.0.0"  # a loopback-only pod would be unreachable through its Service


def server_policy(overlay: str) -> dict:
    return the(rendered(overlay), "NetworkPolicy", "backtrack-serving")


def namespace_labels(policy: dict) -> dict[str, str]:
    """The namespace labels a policy's peers ask for: the ones the user must set."""
    labels: dict[str, str] = {}
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            labels.update(peer.get("namespaceSelector", {}).get("matchLabels", {}))
    return labels


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_only_the_gateway_prometheus_and_the_picker_reach_the_server(overlay):
    policy = server_policy(overlay)
    namespace = policy["metadata"]["namespace"]
    pod_labels = server_deployment(overlay)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], pod_labels)
    gateway, monitoring = GATEWAY_NAMESPACE_LABEL, PROMETHEUS_NAMESPACE_LABEL
    epp = the(rendered("router"), "Deployment", "backtrack-serving-epp")
    picker = Caller(namespace, epp["spec"]["template"]["metadata"]["labels"])
    admitted = [
        Caller("envoy-gateway-system", GATEWAY_POD, gateway),
        Caller("monitoring", PROMETHEUS, monitoring),
        picker,
    ]
    refused = [
        Caller("envoy-gateway-system", GATEWAY_POD),  # its namespace not labelled yet
        Caller("default", {"app": "anything"}),
        Caller("default", PROMETHEUS),  # a pod calling itself prometheus, in any namespace
        Caller("monitoring", {"app.kubernetes.io/name": "grafana"}, monitoring),
        Caller(namespace, {"run": "debug-shell"}),  # the server's own namespace is no pass
        Caller(namespace, pod_labels),  # nor are the other replicas
    ]
    for caller in admitted:
        assert policy_admits(policy, caller, 8000), caller
    for caller in refused:
        assert not policy_admits(policy, caller, 8000), caller
    assert policy["spec"]["egress"] == []  # and the server opens no connection


def test_only_the_gateway_calls_the_picker_and_only_prometheus_scrapes_it():
    policy = the(rendered("router"), "NetworkPolicy", "backtrack-serving-epp")
    gateway = Caller("gateway", {}, GATEWAY_NAMESPACE_LABEL)
    prometheus = Caller("monitoring", PROMETHEUS, PROMETHEUS_NAMESPACE_LABEL)
    assert policy_admits(policy, gateway, 9002) and not policy_admits(policy, gateway, 9090)
    assert policy_admits(policy, prometheus, 9090) and not policy_admits(policy, prometheus, 9002)
    assert not policy_admits(policy, Caller("default", {}), 9002)
    assert not policy_admits(policy, Caller("default", {}), 9090)


def test_the_docs_say_which_namespace_labels_to_set():
    """The policies let nobody in until the user labels the namespaces: the docs say how."""
    documented = {**GATEWAY_NAMESPACE_LABEL, **PROMETHEUS_NAMESPACE_LABEL}
    for policy in (server_policy("gpu"), the(rendered("router"), "NetworkPolicy")):
        assert namespace_labels(policy) == documented
    docs = DOCS.read_text()
    for key, value in documented.items():
        assert re.search(rf"kubectl label namespace \S+ {re.escape(key)}={value}", docs), key


def test_the_evaluators_can_tell_open_from_closed():
    """The checks above could fail: an ingress rule with no `from` admits anyone, a prefix
    routes more than its own path."""
    open_policy = {
        "metadata": {"namespace": "backtrack"},
        "spec": {"policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 8000}]}]},
    }
    assert policy_admits(open_policy, Caller("default", {"app": "anything"}), 8000)
    assert not policy_admits(open_policy, Caller("default", {}), 9000)
    prefix = {"spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}]}]}}
    assert route_admits(prefix, "GET", "/v1/models") and route_admits(prefix, "POST", "/v1")
    assert not route_admits(prefix, "GET", "/v1x") and not route_admits(prefix, "GET", "/metrics")
    assert route_admits({"spec": {"rules": [{}]}}, "GET", "/metrics")


def test_the_gateway_routes_every_generation_route_and_nothing_for_operators():
    route = the(rendered("router"), "HTTPRoute")
    served = server_routes()
    generation = served - OPERATOR_ROUTES
    assert {
        ("POST", "/generate"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    } <= generation
    for method, path in generation | ROUTED_BEFORE_SERVED:
        assert route_admits(route, method, path), (method, path)
    for method, path in OPERATOR_ROUTES:
        assert not route_admits(route, method, path), (method, path)
    for method, path in [("GET", "/generate"), ("POST", "/generate/x"), ("GET", "/v1/anything")]:
        assert not route_admits(route, method, path), (method, path)


def test_each_routed_path_is_one_the_server_serves():
    """Exact matches only: a prefix would route whatever the server adds later, unreviewed."""
    route = the(rendered("router"), "HTTPRoute")
    assert all(len(rule["matches"]) <= 8 for rule in route["spec"]["rules"])  # the CRD's maximum
    matches = [m for rule in route["spec"]["rules"] for m in rule["matches"]]
    assert all(m["path"]["type"] == "Exact" and "method" in m for m in matches), matches
    routed = {(m["method"], m["path"]["value"]) for m in matches}
    assert routed - ROUTED_BEFORE_SERVED <= server_routes() - OPERATOR_ROUTES
