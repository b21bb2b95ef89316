"""Durability and retention rules of the rendered manifests (issue 11): a manifest breaking one fails.

- GCS fault tolerance: every RayService (or RayCluster) sets ``gcsFaultToleranceOptions`` with the
  Redis backend, a ``redisAddress`` and a ``redisPassword`` from a Secret key that exists, leaves
  ``externalStorageNamespace`` to KubeRay (each RayCluster's UID: the two clusters of an upgrade must
  not share, nor the old one's Redis cleanup Job delete, the new one's state), and sets none of what
  KubeRay refuses next to it (``redis-password`` in rayStartParams, ``REDIS_PASSWORD`` or
  ``RAY_REDIS_ADDRESS`` on the head, the ``ray.io/ft-enabled`` and
  ``ray.io/external-storage-namespace`` annotations).
- The Redis behind ``redisAddress``, when it is in the manifests (a host with a dot that is no
  Service of theirs is an external Redis, yours to check): a Service port that exists;
  ``redis-server`` run directly, so that its configuration (the ConfigMap file it loads, then its
  ``--options``) can be read; ``appendonly yes`` (and ``appendfsync`` not ``no``) with ``dir`` on a
  PersistentVolumeClaim, so that a restarted Redis keeps the GCS state; ``maxmemory-policy
  noeviction`` (an evicted key is lost cluster state); the password from the same Secret key as
  ``redisPassword``, never in the configuration.
- Redis's network: a NetworkPolicy admits only the Ray head pods (KubeRay's Redis cleanup Job is
  built from the head's template), only on the Redis port; no other pod, namespace or address.
- Retention: the Job running ``storage_jobs.py setup`` gets every ``SUPERRES_RETENTION_*_DAYS``
  setting as a whole number of days >= 1, prefixes that do not overlap (k8s/storage_jobs.py builds
  the lifecycle rules from them), and a result cache that expires no later than the results.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from k8s.access import Backend, backend, ingress_policies, labels_match, port_problems
from k8s.render import resource_id
from k8s.security import Pod, configmaps, container_env, pods
from k8s.storage_jobs import (
    CACHE_DAYS,
    RESULTS_DAYS,
    StorageJobError,
    read_retention,
    retention_rules,
)

Secrets = Mapping[str, frozenset[str] | set[str]]

REDIS_PORT = 6379
# What KubeRay refuses next to gcsFaultToleranceOptions (ray-operator utils/validation.go).
_KUBERAY_FT_ANNOTATIONS = ("ray.io/ft-enabled", "ray.io/external-storage-namespace")
_KUBERAY_FT_HEAD_ENV = ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS")


# --- GCS fault tolerance -------------------------------------------------------------------------


def _clusters(resources: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], Any]]:
    for resource in resources:
        spec = resource.get("spec") or {}
        if resource.get("kind") == "RayService":
            yield resource, spec.get("rayClusterConfig") or {}
        elif resource.get("kind") == "RayCluster":
            yield resource, spec


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a ``redisAddress``: ``host:port``, ``redis://[user:pass@]host:port``, or a
    comma-separated list (the first one)."""
    first = address.split(",")[0].strip()
    first = first.split("://", 1)[-1].rsplit("@", 1)[-1]
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        return first, REDIS_PORT
    return host.strip("[]"), int(port)


def gcs_ft_problems(resources: Sequence[Mapping[str, Any]], secrets: Secrets) -> list[str]:
    """GCS fault tolerance on every Ray cluster, backed by a persistent Redis only the head reaches."""
    problems: list[str] = []
    for resource, cluster in _clusters(resources):
        where = resource_id(resource)
        annotations = (resource.get("metadata") or {}).get("annotations") or {}
        options = cluster.get("gcsFaultToleranceOptions")
        if not isinstance(options, dict):
            problems.append(
                f"{where}: no GCS fault tolerance: the head pod is a single point of failure (its "
                "loss restarts every replica); set rayClusterConfig.gcsFaultToleranceOptions "
                "(redisAddress, redisPassword)"
            )
            continue
        backend_name = options.get("backend", "redis")
        if backend_name != "redis":
            problems.append(
                f"{where}: gcsFaultToleranceOptions.backend {backend_name}: use the external Redis "
                "(backend redis, redisAddress)"
            )
        if options.get("externalStorageNamespace"):
            problems.append(
                f"{where}: leave gcsFaultToleranceOptions.externalStorageNamespace unset: KubeRay "
                "then uses each RayCluster's UID; a fixed one makes the old and the new cluster of "
                "an upgrade share the GCS state, and the old one's Redis cleanup Job delete it"
            )
        problems += _kuberay_conflicts(where, cluster, annotations)
        ref = ((options.get("redisPassword") or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not isinstance(ref, dict):
            problems.append(
                f"{where}: gcsFaultToleranceOptions.redisPassword must come from a Secret "
                "(valueFrom.secretKeyRef)"
            )
        elif ref.get("key") not in secrets.get(str(ref.get("name")), set()):
            problems.append(
                f"{where}: gcsFaultToleranceOptions.redisPassword: no key {ref.get('key')!r} in "
                f"Secret {ref.get('name')}"
            )
        address = str(options.get("redisAddress") or "")
        if not address:
            problems.append(f"{where}: set gcsFaultToleranceOptions.redisAddress")
            continue
        host, port = split_address(address)
        redis = backend(resources, host, port)
        if redis is None:
            if "." not in host:
                problems.append(
                    f"{where}: redisAddress {address}: no Service {host} in the manifests (for an "
                    "external Redis give its full host name)"
                )
            continue
        service_ports = ((redis.service or {}).get("spec") or {}).get("ports") or []
        if port not in [p.get("port") for p in service_ports]:
            problems.append(f"{where}: redisAddress {address}: Service {host} has no port {port}")
            continue
        problems += redis_problems(resources, redis, ref if isinstance(ref, dict) else None)
        problems += redis_network_problems(resources, redis)
    return list(dict.fromkeys(problems))


def _kuberay_conflicts(
    where: str, cluster: Mapping[str, Any], annotations: Mapping[str, Any]
) -> list[str]:
    head = cluster.get("headGroupSpec") or {}
    problems = []
    if (head.get("rayStartParams") or {}).get("redis-password"):
        problems.append(
            f"{where}: KubeRay refuses redis-password in rayStartParams next to "
            "gcsFaultToleranceOptions: use redisPassword there"
        )
    containers = ((head.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    names = {e.get("name") for e in containers[0].get("env") or []}
    problems += [
        f"{where}: KubeRay refuses {name} on the head next to gcsFaultToleranceOptions: set it there"
        for name in _KUBERAY_FT_HEAD_ENV
        if name in names
    ]
    problems += [
        f"{where}: KubeRay refuses the annotation {key} next to gcsFaultToleranceOptions"
        for key in _KUBERAY_FT_ANNOTATIONS
        if key in annotations
    ]
    return problems


# --- the Redis -----------------------------------------------------------------------------------


def redis_config(
    pod: Pod, container: Mapping[str, Any], settings: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, str], str | None]:
    """The configuration a Redis container runs with (its config file from a ConfigMap, then its
    ``--name value`` options; later wins), or the reason it cannot be read."""
    command = [str(t) for t in container.get("command") or []]
    tokens = [*command, *(str(t) for t in container.get("args") or [])]
    if tokens and posixpath.basename(tokens[0]) == "docker-entrypoint.sh":
        tokens = tokens[1:]
    if tokens and posixpath.basename(tokens[0]) == "redis-server":
        tokens = tokens[1:]
    elif command or (tokens and not tokens[0].endswith(".conf") and not tokens[0].startswith("-")):
        return {}, (
            f"runs {' '.join(tokens[:2])!r}: run redis-server directly (command: [redis-server, "
            "<config file>]) so that its configuration can be checked"
        )
    config: dict[str, str] = {}
    if tokens and not tokens[0].startswith("--"):
        text = _mounted_configmap_file(pod, container, tokens[0], settings)
        if text is None:
            return {}, f"its config file {tokens[0]} is not a ConfigMap key of the manifests"
        for line in text.splitlines():
            config.update(_directive(line))
        tokens = tokens[1:]
    name: str | None = None
    values: list[str] = []
    for token in [*tokens, "--"]:
        if token.startswith("--"):
            if name:
                config[name] = " ".join(values)
            name, values = token[2:].lower(), []
        else:
            values.append(token)
    return config, None


def _directive(line: str) -> dict[str, str]:
    line = line.strip()
    if not line or line.startswith("#"):
        return {}
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    return {words[0].lower(): " ".join(words[1:])} if words else {}


def _mounted_configmap_file(
    pod: Pod, container: Mapping[str, Any], path: str, settings: Mapping[str, Mapping[str, str]]
) -> str | None:
    path = posixpath.normpath(path)
    for mount in container.get("volumeMounts") or []:
        base = posixpath.normpath(str(mount.get("mountPath", "")))
        source = pod.volume(mount.get("name")).get("configMap")
        if source is None:
            continue
        if "subPath" in mount and path == base:
            relative = str(mount["subPath"])
        elif "subPath" not in mount and path.startswith(base.rstrip("/") + "/"):
            relative = path[len(base.rstrip("/")) + 1 :]
        else:
            continue
        items = {i.get("path"): i.get("key") for i in source.get("items") or []}
        key = items.get(relative, relative) if source.get("items") else relative
        data = settings.get(str(source.get("name")))
        if data is not None and key in data:
            return data[key]
    return None


def _persistent(
    pod: Pod, container: Mapping[str, Any], path: str, claims: Sequence[str]
) -> str | None:
    """The volume holding ``path`` when it is a PersistentVolumeClaim, else None."""
    best: tuple[int, Mapping[str, Any]] | None = None
    for mount in container.get("volumeMounts") or []:
        base = posixpath.normpath(str(mount.get("mountPath", "")))
        inside = path == base or path.startswith(base.rstrip("/") + "/")
        if inside and (best is None or len(base) > best[0]):
            best = (len(base), mount)
    if best is None or best[1].get("readOnly"):
        return None
    name = str(best[1].get("name"))
    volume = pod.volume(name)
    if "persistentVolumeClaim" in volume or (not volume and name in claims):
        return name
    return None


def _claim_templates(resources: Sequence[Mapping[str, Any]], pod: Pod) -> list[str]:
    for resource in resources:
        if resource.get("kind") == "StatefulSet" and resource_id(resource) == pod.where:
            templates = (resource.get("spec") or {}).get("volumeClaimTemplates") or []
            return [str((t.get("metadata") or {}).get("name")) for t in templates]
    return []


def redis_problems(
    resources: Sequence[Mapping[str, Any]], redis: Backend, password: Mapping[str, Any] | None
) -> list[str]:
    """Persistence (AOF on a PVC), no eviction, and the password from the head's Secret."""
    problems = []
    settings = configmaps(resources)
    for pod in redis.pods:
        container = redis.container or (pod.spec.get("containers") or [{}])[0]
        where = f"{pod.where} {container.get('name')}"
        config, unreadable = redis_config(pod, container, settings)
        if unreadable:
            problems.append(f"{where}: {unreadable}")
            continue
        if config.get("appendonly", "no").lower() != "yes":
            problems.append(
                f"{where}: set appendonly yes: without the append-only file a restarted Redis "
                "loses the GCS state, and the head's fault tolerance with it"
            )
        if config.get("appendfsync", "everysec").lower() == "no":
            problems.append(f"{where}: appendfsync no leaves writes to the kernel: use everysec")
        folder = config.get("dir", "")
        claims = _claim_templates(resources, pod)
        if not folder.startswith("/"):
            problems.append(f"{where}: set dir to the absolute path of its PersistentVolumeClaim")
        elif _persistent(pod, container, posixpath.normpath(folder), claims) is None:
            problems.append(
                f"{where}: dir {folder} is not on a PersistentVolumeClaim: the append-only file "
                "would not survive the pod"
            )
        policy = config.get("maxmemory-policy", "noeviction").lower()
        if policy != "noeviction":
            problems.append(
                f"{where}: maxmemory-policy {policy} evicts keys, which are the cluster's state: "
                "use noeviction"
            )
        if "requirepass" in config:
            problems.append(f"{where}: requirepass in its configuration: keep it in a Secret")
        if password is not None and not any(
            (env.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == password.get("name")
            and (env.get("valueFrom") or {}).get("secretKeyRef", {}).get("key")
            == password.get("key")
            for c in pod.containers
            for env in c.get("env") or []
        ):
            problems.append(
                f"{pod.where}: no container reads Secret {password.get('name')} key "
                f"{password.get('key')} (the head's redisPassword): Redis would not require it"
            )
    return problems


def redis_network_problems(resources: Sequence[Mapping[str, Any]], redis: Backend) -> list[str]:
    """A NetworkPolicy admits only the Ray head pods, on the Redis port only."""
    target = redis.pods[0]
    ports_ok = {redis.port, redis.port_name} - {None}
    all_pods = list(pods(resources))
    heads = [p for p in all_pods if p.kind == "ray-head"]
    policies = ingress_policies(resources, target.labels)
    if not policies:
        return [
            f"{target.where}: no NetworkPolicy limits who reaches Redis: admit the Ray head only"
        ]
    problems = []
    admitted: list[Pod] = []
    for policy in policies:
        for i, rule in enumerate(policy["spec"].get("ingress") or []):
            where = f"{resource_id(policy)} ingress[{i}]"
            problems += port_problems(where, rule, ports_ok, redis.port, "Redis")
            peers = rule.get("from") or []
            if not peers:
                problems.append(f"{where}: admits every source; only the Ray head may reach Redis")
                admitted += heads
            for peer in peers:
                if "ipBlock" in peer:
                    problems.append(
                        f"{where}: admits an ipBlock; only the Ray head may reach Redis"
                    )
                    continue
                if "namespaceSelector" in peer:
                    problems.append(
                        f"{where}: admits pods of other namespaces; only the Ray head may reach Redis"
                    )
                    continue
                selector = peer.get("podSelector") or {}
                if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                    problems.append(f"{where}: admits every pod of the namespace")
                    admitted += heads
                    continue
                for pod in all_pods:
                    if not labels_match(selector, pod.labels):
                        continue
                    if pod.kind == "ray-head":
                        admitted.append(pod)
                    else:
                        problems.append(f"{where}: admits {pod.where}, which is not the Ray head")
    problems += [
        f"{head.where}: the NetworkPolicy keeps the Ray head from Redis (its GCS could not start)"
        for head in heads
        if head not in admitted
    ]
    return problems


# --- retention -----------------------------------------------------------------------------------


def retention_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The setup Job gets valid retention settings, from which k8s/storage_jobs.py builds rules."""
    settings = configmaps(resources)
    setups = [
        (pod, container)
        for pod in pods(resources)
        if pod.kind == "Job"
        for container in pod.containers
        if _runs_setup(container)
    ]
    if not setups:
        return [
            "no Job runs `storage_jobs.py setup`, which sets the results bucket's lifecycle rules "
            "(retention)"
        ]
    problems = []
    for pod, container in setups:
        where = f"{pod.where} {container.get('name')}"
        env = container_env(container, settings)
        try:
            days = read_retention(env)
            retention_rules(days, env.get("SUPERRES_S3_PREFIX", ""))
        except StorageJobError as e:
            problems.append(f"{where}: {e}")
            continue
        if days[CACHE_DAYS] > days[RESULTS_DAYS]:
            problems.append(
                f"{where}: {CACHE_DAYS} ({days[CACHE_DAYS]}) is above {RESULTS_DAYS} "
                f"({days[RESULTS_DAYS]}): a cache hit could name a deleted result"
            )
    return problems


def _runs_setup(container: Mapping[str, Any]) -> bool:
    tokens = [str(t) for t in [*(container.get("command") or []), *(container.get("args") or [])]]
    script = any(posixpath.basename(t) == "storage_jobs.py" for t in tokens)
    return script and "setup" in tokens


def durability_problems(resources: Sequence[Mapping[str, Any]], secrets: Secrets) -> list[str]:
    """Every rule of this module on a rendered overlay (``secrets``: Secret name -> its keys)."""
    return [*gcs_ft_problems(resources, secrets), *retention_problems(resources)]
