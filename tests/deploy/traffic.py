"""Who reaches what: a NetworkPolicy's ingress rules and an HTTPRoute's matches, evaluated the
way Kubernetes and the Gateway API define them, so the tests ask "is this caller let in?" rather
than compare YAML. Whatever these evaluators do not model (ipBlock, matchExpressions, named
ports, regular expressions, header matches) is refused loudly, so a manifest cannot slip past
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Caller:
    """A pod that opens a connection: its namespace, that namespace's labels, its own labels."""

    namespace: str
    pod_labels: dict[str, str]
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def all_namespace_labels(self) -> dict[str, str]:
        # Kubernetes labels every namespace with its own name.
        return {**self.namespace_labels, "kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's matchLabels against labels; `{}` selects all."""
    unknown = set(selector) - {"matchLabels"}
    assert not unknown, f"selectors with {unknown} are not modelled"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], policy_namespace: str, caller: Caller) -> bool:
    assert "ipBlock" not in peer, "ipBlock peers are not modelled"
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:  # podSelector alone: pods of the policy's own namespace
        in_namespace = caller.namespace == policy_namespace
    else:
        in_namespace = selects(namespaces, caller.all_namespace_labels())
    return in_namespace and (pods is None or selects(pods, caller.pod_labels))


def _port_admits(rule_port: dict[str, Any], port: int, protocol: str) -> bool:
    assert isinstance(rule_port.get("port"), int), f"named or missing port: {rule_port}"
    assert "endPort" not in rule_port, "port ranges are not modelled"
    return rule_port["port"] == port and rule_port.get("protocol", "TCP") == protocol


def policy_admits(policy: dict[str, Any], caller: Caller, port: int, protocol: str = "TCP") -> bool:
    """Whether this one policy lets `caller` open `port` on the pods it selects."""
    assert "Ingress" in policy["spec"]["policyTypes"], "the policy does not restrict ingress"
    namespace = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress", []):
        peers, ports = rule.get("from"), rule.get("ports")
        source_ok = not peers or any(_peer_admits(p, namespace, caller) for p in peers)
        port_ok = not ports or any(_port_admits(p, port, protocol) for p in ports)
        if source_ok and port_ok:
            return True
    return False


def route_admits(route: dict[str, Any], method: str, path: str) -> bool:
    """Whether an HTTPRoute sends `method path` on to its backends (Gateway API v1 semantics)."""
    for rule in route["spec"]["rules"]:
        matches = rule.get("matches") or [{}]  # no match: every request (PathPrefix /)
        if any(_match_admits(match, method, path) for match in matches):
            return True
    return False


def _match_admits(match: dict[str, Any], method: str, path: str) -> bool:
    unknown = set(match) - {"path", "method"}
    assert not unknown, f"matches on {unknown} are not modelled"
    if match.get("method", method) != method:
        return False
    kind = match.get("path", {}).get("type", "PathPrefix")
    value = match.get("path", {}).get("value", "/")
    if kind == "Exact":
        return path == value
    assert kind == "PathPrefix", f"{kind} paths are not modelled"
    # Element-wise: /v1 matches /v1 and /v1/models, never /v1x; a trailing slash is ignored.
    prefix = [part for part in value.split("/") if part]
    return [part for part in path.split("/") if part][: len(prefix)] == prefix
