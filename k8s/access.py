"""Who may reach what (issue 10), on the rendered manifests: a manifest breaking a rule fails.

- The object store (the pods behind ``SUPERRES_S3_ENDPOINT_URL``): a NetworkPolicy admits only the
  Ray pods, the Jobs and named namespaces (the Ingress controller's), and only on the S3 port; no
  Service exposes another port of it (the console).
- The Ray containers sign with their own S3 user, never with the object store's root credentials,
  and a Job that holds the root credentials provisions that user (k8s/minio_user.sh).
- API keys are on: the Ray containers read ``SUPERRES_API_KEYS_FILE`` from a read-only mount of a
  required Secret.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from k8s.render import resource_id
from k8s.security import Pod, configmap_data, configmaps, container_env, pods, ray_containers

S3_KEY_VARS = ("SUPERRES_S3_ACCESS_KEY_ID", "SUPERRES_S3_SECRET_ACCESS_KEY")
ROOT_KEY_VARS = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
API_KEYS_VAR = "SUPERRES_API_KEYS_FILE"


# --- the object store ----------------------------------------------------------------------------


@dataclass
class Backend:
    """The in-cluster pods behind a Service and the port a client reaches there."""

    pods: list[Pod]
    port: int  # the container port
    port_name: str | None
    service: Mapping[str, Any] | None = None
    container: Mapping[str, Any] | None = None  # the container declaring that port


ObjectStore = Backend  # the S3 store's


def backend(resources: Sequence[Mapping[str, Any]], host: str, port: int) -> Backend | None:
    """The pods of the manifests behind ``host:port`` (a Service name, optionally followed by its
    namespace and cluster domain); None when no Service of that name selects any."""
    name = host.split(".")[0]
    services = [r for r in resources if r.get("kind") == "Service"]
    service = next((s for s in services if s["metadata"].get("name") == name), None)
    if service is None:
        return None
    selector = (service.get("spec") or {}).get("selector") or {}
    found = [p for p in pods(resources) if selector and labels_match(selector, p.labels)]
    if not found:
        return None
    target: Any = next(
        (
            p.get("targetPort", port)
            for p in service["spec"].get("ports") or []
            if p["port"] == port
        ),
        port,
    )
    for container in found[0].containers:
        for declared in container.get("ports") or []:
            if target in (declared.get("name"), declared.get("containerPort")):
                return Backend(
                    found, int(declared["containerPort"]), declared.get("name"), service, container
                )
    return Backend(found, int(target) if str(target).isdigit() else port, None, service)


def object_store(resources: Sequence[Mapping[str, Any]]) -> ObjectStore | None:
    """The in-cluster pods behind ``SUPERRES_S3_ENDPOINT_URL`` (None: an external store)."""
    endpoint = urlsplit(configmap_data(resources).get("SUPERRES_S3_ENDPOINT_URL", ""))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return backend(resources, endpoint.hostname or "", port)


def ingress_policies(
    resources: Sequence[Mapping[str, Any]], labels: Mapping[str, str]
) -> list[Mapping[str, Any]]:
    """The NetworkPolicies that limit who reaches pods with these labels."""
    return [
        r
        for r in resources
        if r.get("kind") == "NetworkPolicy"
        and "Ingress" in (r["spec"].get("policyTypes") or [])
        and labels_match(r["spec"].get("podSelector") or {}, labels)
    ]


def port_problems(
    where: str, rule: Mapping[str, Any], allowed: set[Any], port: Any, what: str, why: str = ""
) -> list[str]:
    """An ingress rule must name ports, and only the ``allowed`` ones (``port`` by number/name)."""
    ports = [p.get("port") for p in rule.get("ports") or []]
    problems = []
    if not ports or None in ports:
        problems.append(f"{where}: opens every port; open only the {what} port {port}")
    problems += [
        f"{where}: opens port {p}; only the {what} port {port}{why}"
        for p in ports
        if p is not None and p not in allowed
    ]
    return problems


def network_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Only the Ray pods, the Jobs and named namespaces reach the object store, on S3 only."""
    store = object_store(resources)
    if store is None:
        return []
    s3_ports = {store.port, store.port_name} - {None}
    all_pods = list(pods(resources))
    clients = [p for p in all_pods if p.is_ray or p.kind == "Job"]
    policies = ingress_policies(resources, store.pods[0].labels)
    if not policies:
        return [f"{store.pods[0].where}: no NetworkPolicy limits who reaches the object store"]
    problems = []
    admitted: list[Pod] = []
    for policy in policies:
        for i, rule in enumerate(policy["spec"].get("ingress") or []):
            where = f"{resource_id(policy)} ingress[{i}]"
            problems += port_problems(
                where, rule, s3_ports, store.port, "S3", " (keep the console private)"
            )
            peers = rule.get("from") or []
            if not peers:
                problems.append(f"{where}: admits every source")
            for peer in peers:
                problems += _peer_problems(where, peer, all_pods, clients, admitted)
    for pod in clients:
        if pod.is_ray and pod not in admitted:
            problems.append(f"{pod.where}: the NetworkPolicy keeps this Ray pod from the store")
    for service in resources:
        if service.get("kind") != "Service":
            continue
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector or not labels_match(selector, store.pods[0].labels):
            continue
        for port in service["spec"].get("ports") or []:
            if port.get("targetPort", port.get("port")) not in s3_ports:
                problems.append(
                    f"{resource_id(service)}: exposes port {port.get('name') or port.get('port')} "
                    "of the object store; only S3 (keep the console private)"
                )
    return problems


def _peer_problems(
    where: str,
    peer: Mapping[str, Any],
    all_pods: list[Pod],
    clients: list[Pod],
    admitted: list[Pod],
) -> list[str]:
    if "ipBlock" in peer:
        return [f"{where}: admits an ipBlock; name pods or namespaces instead"]
    if "namespaceSelector" in peer:
        selector = peer["namespaceSelector"] or {}
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            admitted.extend(clients)
            return [f"{where}: admits every namespace"]
        return []  # another namespace: the Ingress controller's
    selector = peer.get("podSelector") or {}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        admitted.extend(clients)
        return [f"{where}: admits every pod of the namespace"]
    problems = []
    for pod in all_pods:
        if labels_match(selector, pod.labels):
            if pod in clients:
                admitted.append(pod)
            else:
                problems.append(f"{where}: admits {pod.where}, which is no S3 client")
    return problems


def labels_match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Service selector (a plain map) or a LabelSelector matches these labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(op, False)
        if not ok:
            return False
    return True


# --- credentials ---------------------------------------------------------------------------------


def credential_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ray pods sign with their own S3 user, which a Job holding the root credentials creates."""
    store = object_store(resources)
    if store is None:
        return []
    root = {
        ref["name"]
        for pod in store.pods
        for container in pod.containers
        for var, ref in _secret_refs(container).items()
        if var in ROOT_KEY_VARS
    }
    jobs = [c for p in pods(resources) if p.kind == "Job" for c in p.containers]
    problems = []
    for pod in pods(resources):
        for container in ray_containers(pod):
            where = f"{pod.where} {container.get('name')}"
            refs = _secret_refs(container)
            for var in S3_KEY_VARS:
                secret = refs.get(var, {}).get("name")
                if secret is None:
                    problems.append(f"{where}: {var} must come from the app user's Secret")
                elif secret in root:
                    problems.append(
                        f"{where}: {var} is the object store's root credential (Secret {secret}); "
                        "use the limited user's Secret"
                    )
                elif not any(_reads(job, secret) and _reads(job, *root) for job in jobs):
                    problems.append(
                        f"{where}: no Job creates the S3 user of Secret {secret} "
                        "(a Job container reading it and the root credentials)"
                    )
    return sorted(set(problems))


def _secret_refs(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    refs = {}
    for env in container.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            refs[str(env.get("name"))] = ref
    return refs


def _reads(container: Mapping[str, Any], *secrets: str) -> bool:
    names = {ref.get("name") for ref in _secret_refs(container).values()}
    return bool(secrets) and set(secrets) <= names


def api_key_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Ray containers read the API keys from a read-only mount of a required Secret."""
    settings = configmaps(resources)
    problems = []
    for pod in pods(resources):
        for container in ray_containers(pod):
            where = f"{pod.where} {container.get('name')}"
            path = container_env(container, settings).get(API_KEYS_VAR)
            if not path:
                problems.append(f"{where}: set {API_KEYS_VAR}: without it the API needs no key")
                continue
            problem = _secret_file_problem(pod, container, posixpath.normpath(path))
            if problem:
                problems.append(f"{where}: {API_KEYS_VAR} {path}: {problem}")
    return problems


def _secret_file_problem(pod: Pod, container: Mapping[str, Any], path: str) -> str | None:
    for mount in container.get("volumeMounts") or []:
        base = str(mount.get("mountPath", "")).rstrip("/")
        if not path.startswith(base + "/"):
            continue
        secret = pod.volume(mount.get("name")).get("secret")
        if secret is None:
            return "is not in a Secret volume"
        if not mount.get("readOnly"):
            return "mount the Secret readOnly: true"
        if "subPath" in mount:
            return "mount the Secret folder, not a subPath (a rotated key would never arrive)"
        if secret.get("optional"):
            return "the Secret must not be optional (without it the API would be open)"
        relative = path[len(base) + 1 :]
        items = secret.get("items")
        if items is not None and relative not in {i.get("path") for i in items}:
            return f"Secret {secret.get('secretName')} puts no file {relative} there"
        return None
    return "no volume is mounted there"


def access_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every rule of this module on a rendered overlay."""
    return [
        *network_problems(resources),
        *credential_problems(resources),
        *api_key_problems(resources),
    ]
