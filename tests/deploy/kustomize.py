"""A minimal kustomize, enough for deploy/k8s: `kubectl kustomize` where no kubectl is installed.

No kustomize binary comes from PyPI or Debian bookworm (Debian's kubectl is 1.20, whose built-in
kustomize predates `patches:`), so the tests render the overlays with this. It knows only what the
kustomizations here use, and refuses anything else, so a new field cannot be silently ignored:

- `resources`: files (several documents each) and directories holding a kustomization.yaml;
- `namespace`: set on every namespaced object and on ServiceAccount subjects of role bindings;
- `images`: `newName`, `newTag` or `digest` for every container (and init container) image;
- `patches` given as `path:`, strategic-merge patches whose target is the object they name.

Strategic merge follows Kubernetes' rules for the fields patched here: maps merge, `null`
deletes, lists of containers, init containers, volumes and env merge by `name`, volume mounts by
`mountPath`, container ports by `containerPort`; any other list is replaced. An item that only
the patch has comes first, as kustomize orders it. Where kubectl exists, the tests check that
this renders exactly what `kubectl kustomize` renders.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


class KustomizeError(ValueError):
    """A kustomization this renderer does not support, or a patch with no target."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects the kustomization in `directory` builds, in resource order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only `path:` patches are supported, got {patch}")
        for document in load_documents(directory / patch["path"]):
            target = find(objects, document)
            merged = strategic_merge(target, document)
            target.clear()
            target.update(merged)
    for image in kustomization.get("images", []):
        set_image(objects, image)
    if "namespace" in kustomization:
        set_namespace(objects, kustomization["namespace"])
    return objects


def find(objects: list[dict[str, Any]], patch: dict[str, Any]) -> dict[str, Any]:
    group = patch["apiVersion"].rpartition("/")[0]
    for candidate in objects:
        if (
            candidate["kind"] == patch["kind"]
            and candidate["metadata"]["name"] == patch["metadata"]["name"]
            and candidate["apiVersion"].rpartition("/")[0] == group
        ):
            return candidate
    raise KustomizeError(f"patch target {patch['kind']}/{patch['metadata']['name']} not found")


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    key = MERGE_KEYS.get(field)
    if key and isinstance(original, list) and isinstance(patch, list):
        by_key = {item[key]: item for item in patch}
        known = {item[key] for item in original}
        added = [copy.deepcopy(item) for item in patch if item[key] not in known]
        kept = [
            strategic_merge(item, by_key[item[key]], field) if item[key] in by_key else item
            for item in original
        ]
        return added + kept
    return copy.deepcopy(patch)


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def set_image(objects: list[dict[str, Any]], image: dict[str, str]) -> None:
    for obj in objects:
        for container in pod_containers(obj):
            name, tag = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                new_tag = image.get("newTag", tag)
                container["image"] = f"{name}:{new_tag}" if new_tag else name


def split_image(reference: str) -> tuple[str, str | None]:
    name, _, digest = reference.partition("@")
    if digest:
        return name, None
    head, sep, tag = name.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return name, None


def set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject["kind"] == "ServiceAccount":
                    subject.setdefault("namespace", namespace)
