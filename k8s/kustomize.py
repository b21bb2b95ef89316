"""A pure-Python rendering of the kustomize subset our overlays use, for offline validation.

Supported kustomization fields: ``resources`` (files and folders holding a kustomization),
``namespace``, ``patches`` (JSON 6902 patch files with a ``target``) and ``images``. Anything else
raises ``ManifestError`` instead of rendering something kustomize would not: keep the overlays to
this subset, or render them with ``kubectl kustomize`` where it is installed (the output is the same).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from k8s import ManifestError

Resource = dict[str, Any]

_FIELDS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_MISSING = object()


def load_documents(path: Path) -> list[Resource]:
    """The non-empty YAML documents of a file; each must be a mapping."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"cannot parse {path}: {e}") from e
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{path}: every document must be a mapping, got {type(doc).__name__}"
            )
    return docs


def render(folder: Path) -> list[Resource]:
    """The resources ``kubectl kustomize folder`` would print, in the same order."""
    kfile = folder / "kustomization.yaml"
    if not kfile.is_file():
        raise ManifestError(f"{folder}: no kustomization.yaml")
    (spec,) = load_documents(kfile) or [{}]
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ManifestError(f"{kfile}: unsupported fields {sorted(unknown)} (see k8s/kustomize.py)")
    resources: list[Resource] = []
    for entry in spec.get("resources") or []:
        path = (folder / entry).resolve()
        resources += render(path) if path.is_dir() else load_documents(path)
    _check_unique(resources, kfile)
    for patch in spec.get("patches") or []:
        _apply_patch_file(resources, folder, patch, kfile)
    for image in spec.get("images") or []:
        for resource in resources:
            _set_images(resource, image)
    if "namespace" in spec:
        for resource in resources:
            if resource.get("kind") not in _CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources


def resource_id(resource: Mapping[str, Any]) -> str:
    meta = resource.get("metadata") or {}
    return f"{resource.get('apiVersion')}/{resource.get('kind')}/{meta.get('name')}"


def _check_unique(resources: list[Resource], kfile: Path) -> None:
    seen: set[str] = set()
    for resource in resources:
        rid = resource_id(resource)
        if rid in seen:
            raise ManifestError(f"{kfile}: {rid} is defined twice")
        seen.add(rid)


# --- patches -------------------------------------------------------------------------------------


def _matches(resource: Resource, target: Mapping[str, Any]) -> bool:
    group, _, version = str(resource.get("apiVersion", "")).rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": resource.get("kind"),
        "name": (resource.get("metadata") or {}).get("name"),
    }
    return all(actual[key] == target[key] for key in actual if key in target)


def _apply_patch_file(
    resources: list[Resource], folder: Path, patch: Mapping[str, Any], kfile: Path
) -> None:
    if set(patch) != {"path", "target"}:
        raise ManifestError(
            f"{kfile}: a patch needs exactly `path` and `target`, got {dict(patch)}"
        )
    target = patch["target"]
    unknown = set(target) - {"group", "version", "kind", "name"}
    if unknown:
        raise ManifestError(f"{kfile}: unsupported target fields {sorted(unknown)}")
    path = folder / patch["path"]
    try:
        ops = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"cannot parse {path}: {e}") from e
    if not isinstance(ops, list):
        raise ManifestError(f"{path}: only JSON 6902 patches (a list of operations) are supported")
    hits = [i for i, r in enumerate(resources) if _matches(r, target)]
    if not hits:
        raise ManifestError(f"{path}: no resource matches target {dict(target)}")
    for i in hits:
        try:
            resources[i] = apply_json_patch(resources[i], ops)
        except ManifestError as e:
            raise ManifestError(f"{path} on {resource_id(resources[i])}: {e}") from e


def apply_json_patch(document: Resource, ops: list[Any]) -> Resource:
    """RFC 6902 ``add``, ``remove``, ``replace`` and ``test`` applied to a copy of ``document``."""
    doc = copy.deepcopy(document)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ManifestError(f"not a JSON patch operation: {op!r}")
        kind, pointer = op["op"], op["path"]
        parent, key = _resolve_parent(doc, pointer)
        if kind == "test":
            if _get(parent, key, pointer) != op.get("value"):
                raise ManifestError(f"test failed at {pointer}: {_get(parent, key, pointer)!r}")
        elif kind == "remove":
            _get(parent, key, pointer)
            del parent[int(key) if isinstance(parent, list) else key]
        elif kind == "replace":
            _get(parent, key, pointer)
            parent[int(key) if isinstance(parent, list) else key] = copy.deepcopy(op.get("value"))
        elif kind == "add":
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, list):
                index = len(parent) if key == "-" else _index(parent, key, pointer, allow_end=True)
                parent.insert(index, value)
            else:
                parent[key] = value
        else:
            raise ManifestError(f"unsupported JSON patch operation {kind!r}")
    return doc


def _tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise ManifestError(f"JSON pointer must start with '/': {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _resolve_parent(doc: Any, pointer: str) -> tuple[Any, str]:
    *parents, last = _tokens(pointer)
    node = doc
    for token in parents:
        if isinstance(node, list):
            node = node[_index(node, token, pointer)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise ManifestError(f"path not found: {pointer}")
    if not isinstance(node, (dict, list)):
        raise ManifestError(f"path not found: {pointer}")
    return node, last


def _index(node: list[Any], token: str, pointer: str, *, allow_end: bool = False) -> int:
    if not token.isdigit() or int(token) > len(node) - (0 if allow_end else 1):
        raise ManifestError(f"bad list index {token!r} in {pointer}")
    return int(token)


def _get(parent: Any, key: str, pointer: str) -> Any:
    if isinstance(parent, list):
        return parent[_index(parent, key, pointer)]
    value = parent.get(key, _MISSING)
    if value is _MISSING:
        raise ManifestError(f"path not found: {pointer}")
    return value


# --- images --------------------------------------------------------------------------------------


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container of ``containers``/``initContainers`` lists anywhere, CRDs included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _split_image(image: str) -> tuple[str, str]:
    """(name, the ``:tag`` or ``@digest`` suffix, possibly empty)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(resource: Resource, rule: Mapping[str, Any]) -> None:
    for container in _containers(resource):
        name, suffix = _split_image(str(container.get("image", "")))
        if name != rule.get("name"):
            continue
        if "digest" in rule:
            suffix = "@" + str(rule["digest"])
        elif "newTag" in rule:
            suffix = ":" + str(rule["newTag"])
        container["image"] = str(rule.get("newName", name)) + suffix
