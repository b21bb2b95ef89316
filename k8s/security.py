"""The hardening rules of the rendered manifests (issue 10): a manifest that breaks one fails.

The pods' rules are here; who may reach what (MinIO's NetworkPolicy, the S3 user of the Ray pods,
API keys) is in k8s/access.py.

- Every container, KubeRay's autoscaler included (``autoscalerOptions.securityContext``): runs as
  non-root, ``allowPrivilegeEscalation: false``, ``readOnlyRootFilesystem: true`` with a writable
  volume at /tmp (and at ``SUPERRES_WEIGHTS_DIR`` in the Ray containers), ``capabilities.drop:
  [ALL]`` and nothing added, a ``RuntimeDefault`` (or ``Localhost``) seccomp profile, not privileged.
- ``automountServiceAccountToken: false`` on every pod but the head of an autoscaling Ray cluster,
  whose autoscaler container scales the workers through the Kubernetes API (so it must keep it).
- Images pinned: a tag other than ``latest``, or a digest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k8s.render import resource_id

_WORKLOADS = {"Job", "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Pod"}
_SECCOMP = {"RuntimeDefault", "Localhost"}
_WRITABLE = ("emptyDir", "ephemeral", "persistentVolumeClaim")


@dataclass
class Pod:
    """A pod template of the manifests and what runs in it."""

    where: str  # e.g. "batch/v1/Job/superres-stage-weights" or "ray.io/v1/RayService/x head"
    kind: str  # "ray-head", "ray-worker" or the workload's kind
    spec: Mapping[str, Any]
    labels: Mapping[str, str]
    containers: list[Mapping[str, Any]] = field(default_factory=list)
    needs_api: bool = False  # it runs a container that calls the Kubernetes API

    @property
    def is_ray(self) -> bool:
        return self.kind in ("ray-head", "ray-worker")

    def volume(self, name: Any) -> Mapping[str, Any]:
        volumes = {v.get("name"): v for v in self.spec.get("volumes") or []}
        return volumes.get(name) or {}


def pods(resources: Sequence[Mapping[str, Any]]) -> Iterator[Pod]:
    """Every pod template: workloads', Jobs' and each group of a RayService or RayCluster."""
    for resource in resources:
        kind = str(resource.get("kind"))
        spec = resource.get("spec") or {}
        if kind == "Pod":
            yield _pod(resource_id(resource), kind, resource)
        elif kind in _WORKLOADS:
            yield _pod(resource_id(resource), kind, spec.get("template") or {})
        elif kind in ("RayService", "RayCluster"):
            yield from _ray_pods(resource)


def _pod(where: str, kind: str, template: Mapping[str, Any]) -> Pod:
    spec = template.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    labels = (template.get("metadata") or {}).get("labels") or {}
    return Pod(where, kind, spec, labels, containers)


def _ray_pods(resource: Mapping[str, Any]) -> Iterator[Pod]:
    spec = resource.get("spec") or {}
    cluster = spec.get("rayClusterConfig", spec) if resource.get("kind") == "RayService" else spec
    head = _pod(
        f"{resource_id(resource)} head",
        "ray-head",
        (cluster.get("headGroupSpec") or {}).get("template") or {},
    )
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions") or {}
        autoscaler = {
            "name": "autoscaler",
            "image": options.get("image"),  # unset: the Ray container's image
            "securityContext": options.get("securityContext"),
            "volumeMounts": options.get("volumeMounts"),
        }
        head.containers.append(autoscaler)
        head.needs_api = True
    yield head
    for group in cluster.get("workerGroupSpecs") or []:
        yield _pod(
            f"{resource_id(resource)} workers {group.get('groupName')}",
            "ray-worker",
            group.get("template") or {},
        )


def ray_containers(pod: Pod) -> list[Mapping[str, Any]]:
    """The containers of a Ray pod that run Ray (not KubeRay's autoscaler)."""
    if not pod.is_ray:
        return []
    return [c for c in (pod.spec.get("containers") or []) if c.get("name") != "autoscaler"]


# --- containers ----------------------------------------------------------------------------------


def container_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Non-root, no escalation, read-only root with writable /tmp, no capabilities, seccomp."""
    settings = configmaps(resources)
    problems = []
    for pod in pods(resources):
        pod_context = pod.spec.get("securityContext") or {}
        for container in pod.containers:
            where = f"{pod.where} {container.get('name')}"
            context = container.get("securityContext") or {}
            if _effective(context, pod_context, "runAsNonRoot") is not True:
                problems.append(f"{where}: set runAsNonRoot: true")
            if _effective(context, pod_context, "runAsUser") == 0:
                problems.append(f"{where}: runAsUser 0 is root")
            if context.get("privileged"):
                problems.append(f"{where}: must not be privileged")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: set allowPrivilegeEscalation: false")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
                problems.append(f"{where}: drop all capabilities (drop: [ALL]) and add none")
            seccomp = _effective(context, pod_context, "seccompProfile") or {}
            if seccomp.get("type") not in _SECCOMP:
                problems.append(f"{where}: set seccompProfile.type: RuntimeDefault")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: set readOnlyRootFilesystem: true")
            writable = ["/tmp"]
            if container in ray_containers(pod):
                writable.append(
                    container_env(container, settings).get("SUPERRES_WEIGHTS_DIR", "/tmp")
                )
            problems += [
                f"{where}: {path} is not writable: mount an emptyDir there "
                "(the root filesystem is read-only)"
                for path in writable
                if not _writable(pod, container, path)
            ]
    return problems


def _effective(container: Mapping[str, Any], pod: Mapping[str, Any], key: str) -> Any:
    return container[key] if key in container else pod.get(key)


def _writable(pod: Pod, container: Mapping[str, Any], path: str) -> bool:
    """A writable volume is mounted at ``path`` or above it."""
    for mount in container.get("volumeMounts") or []:
        base = str(mount.get("mountPath", "")).rstrip("/") or "/"
        if path != base and not path.startswith(base.rstrip("/") + "/"):
            continue
        if mount.get("readOnly"):
            continue
        if any(kind in pod.volume(mount.get("name")) for kind in _WRITABLE):
            return True
    return False


def token_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """No service account token where no container calls the Kubernetes API."""
    problems = []
    for pod in pods(resources):
        automount = pod.spec.get("automountServiceAccountToken")
        if pod.needs_api and automount is False:
            problems.append(
                f"{pod.where}: keep the service account token: KubeRay's autoscaler in this pod "
                "calls the Kubernetes API"
            )
        elif not pod.needs_api and automount is not False:
            problems.append(
                f"{pod.where}: set automountServiceAccountToken: false (no container here calls "
                "the Kubernetes API)"
            )
    return problems


def image_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every image pinned: a version tag (never ``latest``) or a digest."""
    problems = []
    for pod in pods(resources):
        for container in pod.containers:
            image = container.get("image")
            if image is None and container.get("name") == "autoscaler":
                continue  # KubeRay runs the autoscaler in the Ray container's image
            name = str(image or "")
            tag = name.rsplit("/", 1)[-1].partition(":")[2] if "@" not in name else "@"
            if not tag:
                problems.append(f"{pod.where} {container.get('name')}: untagged {name}")
            elif tag == "latest":
                problems.append(f"{pod.where} {container.get('name')}: {name} is not pinned")
    return problems


# --- helpers -------------------------------------------------------------------------------------


def configmap_data(resources: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = {}
    for r in resources:
        if r.get("kind") == "ConfigMap":
            data.update(r.get("data") or {})
    return data


def configmaps(resources: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        str(r["metadata"].get("name")): dict(r.get("data") or {})
        for r in resources
        if r.get("kind") == "ConfigMap"
    }


def container_env(
    container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The plain environment of a container: its ``envFrom`` ConfigMaps, then its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or {}
        env.update(configmaps.get(str(ref.get("name")), {}))
    for var in container.get("env") or []:
        if "value" in var:
            env[str(var.get("name"))] = str(var["value"])
    return env


def security_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every rule of this module on a rendered overlay."""
    return [
        *container_problems(resources),
        *token_problems(resources),
        *image_problems(resources),
    ]
